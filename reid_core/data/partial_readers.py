"""Readers of the partial and occluded re-id test sets: Partial-REID, Partial-iLIDS and
Occluded-REID. Each is a test set only (models train on a holistic dataset such as
Market-1501): partial or occluded queries against a whole-body gallery.

File names start with the identity (`<pid>_<n>.jpg`); no camera is recorded (camid NO_CAMERA),
so every whole-body image of the query's identity counts as a match. Identities are numbered
from 0 or 1 and the manifest reserves pid 0 for distractors: every pid is stored +1.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

from reid_core.data.cameras import NO_CAMERA
from reid_core.data.errors import DatasetError
from reid_core.data.readers import IMAGE_EXTENSIONS, finalize_table, is_image, layout

TEST_SPLITS = ("query", "gallery")

_NAME = re.compile(r"^(\d+)_")
_TIFF = frozenset({".tif", ".tiff"})  # Occluded-REID's release is TIFF


def _images(directory: Path, recursive: bool, extensions: frozenset[str]) -> list[Path]:
    found = []
    for folder, subfolders, files in os.walk(directory):
        subfolders.sort()
        if not recursive:
            subfolders.clear()
        found += [Path(folder) / name for name in sorted(files) if is_image(name, extensions)]
    return found


def _read_test_only(
    root: Path,
    fmt: str,
    folders: dict[str, str],
    *,
    recursive: bool = False,
    extensions: frozenset[str] = IMAGE_EXTENSIONS,
) -> pd.DataFrame:
    rows: list[tuple[str, int, int, str]] = []
    for split, folder in folders.items():
        directory = root / folder
        if not directory.is_dir():
            expected = ", ".join(f"{f}/" for f in folders.values())
            raise DatasetError(
                f"{fmt} dataset {root}: missing folder {folder}/ (this layout needs {expected})"
            )
        for path in _images(directory, recursive, extensions):
            match = _NAME.match(path.name)
            if match is None:
                raise DatasetError(
                    f"{fmt} dataset: image file {path} is not named <pid>_<number>... "
                    "(e.g. 001_01.jpg)"
                )
            rows.append((path.relative_to(root).as_posix(), int(match[1]) + 1, NO_CAMERA, split))
    sources = {split: f"folder {root / folder}" for split, folder in folders.items()}
    table = finalize_table(rows, root, fmt, sources, check_exists=False, splits=TEST_SPLITS)
    missing = set(table.loc[table["split"] == "query", "pid"]) - set(
        table.loc[table["split"] == "gallery", "pid"]
    )
    if missing:
        raise DatasetError(
            f"{fmt} dataset {root}: {len(missing)} query identities have no whole-body image in "
            f"{folders['gallery']}/ (e.g. pid {min(missing) - 1})"
        )
    return table


@layout("partial_reid", splits=TEST_SPLITS)
def read_partial_reid(root: Path) -> pd.DataFrame:
    """Partial-REID: partial_body_images/ (queries) and whole_body_images/ (gallery)."""
    folders = {"query": "partial_body_images", "gallery": "whole_body_images"}
    return _read_test_only(root, "partial_reid", folders)


@layout("partial_ilids", splits=TEST_SPLITS)
def read_partial_ilids(root: Path) -> pd.DataFrame:
    """Partial-iLIDS: query/ (partial) and gallery/ (whole body), one image each per person."""
    return _read_test_only(root, "partial_ilids", {"query": "query", "gallery": "gallery"})


@layout("occluded_reid", splits=TEST_SPLITS)
def read_occluded_reid(root: Path) -> pd.DataFrame:
    """Occluded-REID: occluded_body_images/ (queries) and whole_body_images/ (gallery), as
    released: a folder per identity (<pid>/<pid>_<nn>.tif) or flat, TIFF or JPEG/PNG."""
    folders = {"query": "occluded_body_images", "gallery": "whole_body_images"}
    extensions = IMAGE_EXTENSIONS | _TIFF
    return _read_test_only(root, "occluded_reid", folders, recursive=True, extensions=extensions)
