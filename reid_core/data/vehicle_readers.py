"""Readers of the vehicle re-id layouts with list files: VehicleID and VERI-Wild.

Both number vehicles from 0 or 1 in their lists, while the manifest reserves pid 0 for
distractors: every pid is stored shifted by +1, as for MSMT17.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from reid_core.data.cameras import NO_CAMERA
from reid_core.data.errors import DatasetError
from reid_core.data.gallery_draws import gallery_draws
from reid_core.data.readers import GALLERY_DRAWS, finalize_table, layout, list_lines

VEHICLEID_TEST_SETS = ("800", "1600", "2400")
VERIWILD_TEST_SETS = {"small": "3000", "medium": "5000", "large": "10000"}
SPLIT_DIR = "train_test_split"
DRAW_SEED = 0  # the manifest's own draw; evaluation redraws with evaluate.draw_seed

_VEHICLEID_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_VERIWILD_ITEM = re.compile(r"^(\d+)/(\d+)$")

Row = tuple[str, int, int, str]


def _disjoint_identities(fmt: str, root: Path, train: set[int], test: set[int]) -> None:
    shared = sorted(train & test)
    if shared:
        raise DatasetError(
            f"{fmt} dataset {root}: {len(shared)} vehicle id(s) are in both the train list and "
            f"the test list (e.g. {shared[0] - 1}); train and test identities must be disjoint"
        )


@layout("vehicleid", test_sets=VEHICLEID_TEST_SETS, protocol=GALLERY_DRAWS)
def read_vehicleid(root: Path, test_set: str) -> pd.DataFrame:
    """VehicleID: image/<name>.jpg, and train_test_split/train_list.txt and
    test_list_<800|1600|2400>.txt with lines `<name> <vehicle id>`.

    No camera is recorded (camid NO_CAMERA). The test list has no query and gallery: one
    image per vehicle is drawn as gallery (seed DRAW_SEED) and the rest are queries; the
    evaluate stage redraws them `evaluate.gallery_draws` times.
    """
    lists = {
        "train": root / SPLIT_DIR / "train_list.txt",
        "test": root / SPLIT_DIR / f"test_list_{test_set}.txt",
    }
    parsed: dict[str, list[tuple[str, int]]] = {}
    seen: dict[str, str] = {}
    for kind, path in lists.items():
        entries = []
        for where, fields in list_lines(path, "vehicleid"):
            if len(fields) != 2 or not fields[1].isdigit():
                raise DatasetError(f"vehicleid dataset: {where}: expected `<image name> <id>`")
            name = fields[0]
            if not _VEHICLEID_NAME.match(name):
                raise DatasetError(
                    f"vehicleid dataset: {where}: image name {name!r} must be letters, digits, "
                    "'_' or '-' (the file image/<name>.jpg)"
                )
            if name in seen:
                raise DatasetError(
                    f"vehicleid dataset: {where}: image {name} is listed twice (first at "
                    f"{seen[name]})"
                )
            seen[name] = where
            entries.append((f"image/{name}.jpg", int(fields[1]) + 1))
        if not entries:
            raise DatasetError(f"vehicleid dataset: list file {path} lists no image")
        parsed[kind] = entries
    _disjoint_identities(
        "vehicleid", root, {p for _, p in parsed["train"]}, {p for _, p in parsed["test"]}
    )
    rows: list[Row] = [(path, pid, NO_CAMERA, "train") for path, pid in parsed["train"]]
    test_pids = np.array([pid for _, pid in parsed["test"]])
    try:
        (draw,) = gallery_draws(test_pids, repeats=1, seed=DRAW_SEED)
    except ValueError as err:
        raise DatasetError(f"vehicleid dataset: {lists['test']}: {err}") from None
    is_gallery = np.zeros(len(test_pids), dtype=bool)
    is_gallery[draw.gallery] = True
    for (path, pid), gallery in zip(parsed["test"], is_gallery, strict=True):
        rows.append((path, pid, NO_CAMERA, "gallery" if gallery else "query"))
    sources = {"train": f"list file {lists['train']}"}
    sources |= {split: f"list file {lists['test']}" for split in ("query", "gallery")}
    return finalize_table(rows, root, "vehicleid", sources, check_exists=True)


def _veriwild_cameras(path: Path) -> dict[str, int]:
    """`vid/imgid` -> 0-based camid, from vehicle_info.txt (`vid/imgid;camera;time;...`)."""
    cameras: dict[str, int] = {}
    for where, fields in list_lines(path, "veriwild", sep=";"):
        if where.endswith(":1") and not _VERIWILD_ITEM.match(fields[0]):
            continue  # the header: id/image;Camera ID;Time;Model;Type;Color
        if len(fields) < 2 or not _VERIWILD_ITEM.match(fields[0]) or not fields[1].isdigit():
            raise DatasetError(
                f"veriwild dataset: {where}: expected `<vehicle id>/<image id>;<camera>;...`"
            )
        if int(fields[1]) < 1:
            raise DatasetError(f"veriwild dataset: {where}: cameras start at 1")
        cameras[fields[0]] = int(fields[1]) - 1
    return cameras


@layout("veriwild", test_sets=tuple(VERIWILD_TEST_SETS))
def read_veriwild(root: Path, test_set: str) -> pd.DataFrame:
    """VERI-Wild: images/<vid>/<imgid>.jpg, and under train_test_split/ train_list.txt,
    test_<N>.txt (gallery) and test_<N>_query.txt (N = 3000, 5000, 10000 for the small,
    medium and large test sets), lines `<vid>/<imgid>`; cameras from vehicle_info.txt.

    An image in both the query and the gallery list is kept as a query only: the protocol
    would remove it from its own ranking as a same-camera match anyway.
    """
    size = VERIWILD_TEST_SETS[test_set]
    split_dir = root / SPLIT_DIR
    lists = {
        "train": split_dir / "train_list.txt",
        "query": split_dir / f"test_{size}_query.txt",
        "gallery": split_dir / f"test_{size}.txt",
    }
    cameras = _veriwild_cameras(split_dir / "vehicle_info.txt")
    rows: list[Row] = []
    seen: dict[str, str] = {}
    ids: dict[str, set[int]] = {}
    for split, path in lists.items():
        count = 0
        for where, fields in list_lines(path, "veriwild"):
            item = fields[0]
            if len(fields) != 1 or not _VERIWILD_ITEM.match(item):
                raise DatasetError(
                    f"veriwild dataset: {where}: expected `<vehicle id>/<image id>`, got {item!r}"
                )
            if item not in cameras:
                raise DatasetError(
                    f"veriwild dataset: {where}: image {item} has no line in "
                    f"{split_dir / 'vehicle_info.txt'} (its camera is unknown)"
                )
            count += 1
            if item in seen:
                if split == "gallery" and seen[item] == "query":
                    continue
                raise DatasetError(f"veriwild dataset: {where}: image {item} is listed twice")
            seen[item] = split
            pid = int(item.split("/")[0]) + 1
            ids.setdefault("train" if split == "train" else "test", set()).add(pid)
            rows.append((f"images/{item}.jpg", pid, cameras[item], split))
        if not count:
            raise DatasetError(f"veriwild dataset: list file {path} lists no image")
    _disjoint_identities("veriwild", root, ids["train"], ids["test"])
    sources = {split: f"list file {path}" for split, path in lists.items()}
    return finalize_table(rows, root, "veriwild", sources, check_exists=True)
