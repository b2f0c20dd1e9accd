"""Dataset readers: turn a dataset folder in one of the supported layouts into a label table.

Every reader returns the same table: `path` (POSIX, relative to the dataset root), `pid`
(int64), `camid` (int64, 0-based; NO_CAMERA where the layout records no camera) and `split`
("train" | "query" | "gallery"), sorted by split then path. Conventions shared by all layouts:

- pid -1 marks junk images (Market-1501): they are dropped at load;
- pid 0 marks distractors: allowed in the gallery only;
- each of train, query and gallery must hold at least one image (query and gallery for the
  test-only partial re-id layouts), and every path must exist.

A layout with several test sets (VehicleID's test lists, VERI-Wild's sizes) reads one of them,
named by `test_set`; a layout whose protocol is GALLERY_DRAWS has no fixed query and gallery:
its reader makes one seeded draw, and evaluation redraws and averages (see
`reid_core.evaluation.repeated`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from reid_core.data.cameras import NO_CAMERA
from reid_core.data.errors import DatasetError
from reid_core.data.paths import confined, path_problem
from reid_core.registry import Registry

COLUMNS = ("path", "pid", "camid", "split")
SPLITS = ("train", "query", "gallery")
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png"})
JUNK_PID = -1
DISTRACTOR_PID = 0

FIXED_SPLITS = "fixed_splits"  # query and gallery as the dataset lists them
GALLERY_DRAWS = "gallery_draws"  # VehicleID: one image per identity drawn as gallery, repeated
SplitProtocol = Literal["fixed_splits", "gallery_draws"]


@dataclass(frozen=True)
class Layout:
    """How to read one dataset layout: `read(root)`, or `read(root, test_set)` when the
    layout has `test_sets` (the first is the default), and how its query/gallery are made."""

    read: Callable[..., pd.DataFrame]
    test_sets: tuple[str, ...] = ()
    protocol: SplitProtocol = FIXED_SPLITS
    splits: tuple[str, ...] = SPLITS  # those that must hold images (test-only: no train)


READERS: Registry[Layout] = Registry("dataset format")
"""Dataset layout name -> its Layout."""


def layout(
    name: str,
    test_sets: tuple[str, ...] = (),
    protocol: SplitProtocol = FIXED_SPLITS,
    splits: tuple[str, ...] = SPLITS,
) -> Callable[[Callable[..., pd.DataFrame]], Callable[..., pd.DataFrame]]:
    """Decorator: register the decorated reader as the layout `name`."""

    def decorate(read: Callable[..., pd.DataFrame]) -> Callable[..., pd.DataFrame]:
        READERS.add(name, Layout(read, test_sets, protocol, splits))
        return read

    return decorate


# `<pid>_c<camera>` followed by a non-digit: Market-1501 (0002_c1s1_000451_03.jpg),
# DukeMTMC-reID (0001_c2_f0046182.jpg) and VeRi-776 (0001_c001_00016450_0.jpg) all start so.
_NAME_RE = re.compile(r"^(-?\d+)_c(\d+)(?=\D)")

_FOLDERS: dict[str, dict[str, str]] = {
    "market1501": {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"},
    "dukemtmc": {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"},
    "veri776": {"train": "image_train", "query": "image_query", "gallery": "image_test"},
}
_NAME_EXAMPLES = {
    "market1501": "0002_c1s1_000451_03.jpg",
    "dukemtmc": "0001_c2_f0046182.jpg",
    "veri776": "0001_c001_00016450_0.jpg",
}

_MSMT_LISTS = {
    "list_train.txt": "train",
    "list_val.txt": "train",
    "list_query.txt": "query",
    "list_gallery.txt": "gallery",
}
# V1 and V2 differ only in the image folder names.
_MSMT_DIRS = {"train": ("train", "mask_train_v2"), "test": ("test", "mask_test_v2")}

CSV_FILE = "manifest.csv"


def is_image(name: str, extensions: frozenset[str] = IMAGE_EXTENSIONS) -> bool:
    """Whether a file name is a visible image of one of `extensions` (lower case, with dot)."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in extensions


def _read_folder_layout(root: Path, fmt: str) -> pd.DataFrame:
    """Read a layout with one folder per split and labels in the file names."""
    rows: list[tuple[str, int, int, str]] = []
    sources: dict[str, str] = {}
    for split, folder in _FOLDERS[fmt].items():
        directory = root / folder
        sources[split] = f"folder {directory}"
        if not directory.is_dir():
            expected = ", ".join(f"{f}/" for f in _FOLDERS[fmt].values())
            raise DatasetError(
                f"{fmt} dataset {root}: missing folder {folder}/ (this layout needs {expected})"
            )
        with os.scandir(directory) as entries:
            names = sorted(e.name for e in entries if e.is_file() and is_image(e.name))
        for name in names:
            match = _NAME_RE.match(name)
            if match is None:
                raise DatasetError(
                    f"{fmt} dataset: image file {directory / name} is not named "
                    f"<pid>_c<camera>... (e.g. {_NAME_EXAMPLES[fmt]})"
                )
            pid, camera = int(match[1]), int(match[2])
            if camera < 1:
                raise DatasetError(
                    f"{fmt} dataset: image file {directory / name}: cameras start at 1"
                )
            if pid < JUNK_PID:
                raise DatasetError(f"{fmt} dataset: image file {directory / name}: bad pid {pid}")
            if pid == JUNK_PID:
                continue
            rows.append((f"{folder}/{name}", pid, camera - 1, split))
    return finalize_table(rows, root, fmt, sources, check_exists=False)


@layout("market1501")
def read_market1501(root: Path) -> pd.DataFrame:
    """Market-1501: bounding_box_train/, query/, bounding_box_test/, 6 cameras."""
    return _read_folder_layout(Path(root), "market1501")


@layout("dukemtmc")
def read_dukemtmc(root: Path) -> pd.DataFrame:
    """DukeMTMC-reID: the Market-1501 folders, names like 0001_c2_f0046182.jpg, 8 cameras."""
    return _read_folder_layout(Path(root), "dukemtmc")


@layout("veri776")
def read_veri776(root: Path) -> pd.DataFrame:
    """VeRi-776: image_train/, image_query/, image_test/, names like 0001_c001_00016450_0.jpg."""
    return _read_folder_layout(Path(root), "veri776")


@layout("msmt17")
def read_msmt17(root: Path) -> pd.DataFrame:
    """MSMT17 (V1 or V2): list_{train,val,query,gallery}.txt with lines `relative/path.jpg pid`.

    Train and val lists (val merged into train) point under train/ (V2: mask_train_v2/), query
    and gallery lists under test/ (V2: mask_test_v2/). The camera is the third underscore field
    of the file name (0000_000_01_0303morning_0015_0.jpg is camera 1, camid 0). MSMT17 numbers
    identities from 0 while the manifest reserves pid 0 for distractors, so every pid is stored
    shifted by +1 (train and test identities are disjoint sets in MSMT17 either way).
    """
    root = Path(root)
    image_dirs: dict[str, str] = {}
    for kind, candidates in _MSMT_DIRS.items():
        found = [c for c in candidates if (root / c).is_dir()]
        if not found:
            raise DatasetError(
                f"msmt17 dataset {root}: missing folder {' or '.join(f'{c}/' for c in candidates)}"
            )
        image_dirs[kind] = found[0]
    rows: list[tuple[str, int, int, str]] = []
    sources = {
        "train": f"list files {root / 'list_train.txt'} and {root / 'list_val.txt'}",
        "query": f"list file {root / 'list_query.txt'}",
        "gallery": f"list file {root / 'list_gallery.txt'}",
    }
    for list_name, split in _MSMT_LISTS.items():
        list_path = root / list_name
        if not list_path.is_file():
            raise DatasetError(f"msmt17 dataset {root}: missing list file {list_path}")
        image_dir = image_dirs["train" if split == "train" else "test"]
        for where, fields in list_lines(list_path, "msmt17"):
            if len(fields) != 2 or not fields[1].isdigit():
                raise DatasetError(f"msmt17 dataset: {where}: expected `relative/path.jpg pid`")
            relative = fields[0]
            parts = relative.rsplit("/", 1)[-1].split("_")
            if len(parts) < 3 or not parts[2].isdigit() or int(parts[2]) < 1:
                raise DatasetError(
                    f"msmt17 dataset: {where}: file name {relative} has no camera number in its "
                    "third field (e.g. 0000_000_01_0303morning_0015_0.jpg)"
                )
            rows.append((f"{image_dir}/{relative}", int(fields[1]) + 1, int(parts[2]) - 1, split))
    return finalize_table(rows, root, "msmt17", sources, check_exists=True)


@layout("csv")
def read_csv(root: Path) -> pd.DataFrame:
    """Generic layout: `manifest.csv` at the root with columns path,pid,camid,split.

    camid is 0-based (-1: unknown camera); split is train, query or gallery; paths are relative
    to the root.
    """
    root = Path(root)
    csv_path = root / CSV_FILE
    if not csv_path.is_file():
        raise DatasetError(f"csv dataset {root}: missing {csv_path}")
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DatasetError(f"csv dataset: cannot parse {csv_path}: {err}") from err
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise DatasetError(
            f"csv dataset: {csv_path} lacks column(s) {', '.join(missing)} "
            f"(has: {', '.join(map(str, table.columns))})"
        )
    lines = np.arange(len(table)) + 2  # the header is line 1

    def bad(mask: np.ndarray, column: str, why: str) -> None:
        if mask.any():
            i = int(np.flatnonzero(mask)[0])
            value = table[column].iloc[i]
            raise DatasetError(
                f"csv dataset: {csv_path} line {lines[i]}, column {column}: {value!r} {why}"
                + (f" ({int(mask.sum())} bad rows)" if mask.sum() > 1 else "")
            )

    paths = table["path"].str.strip()
    bad((paths == "").to_numpy(), "path", "is empty")
    problems = paths.map(path_problem)
    if problems.notna().any():
        bad(problems.notna().to_numpy(bool), "path", problems[problems.notna()].iloc[0])
    ints = {}
    for column in ("pid", "camid"):
        ints[column] = pd.to_numeric(table[column].str.strip(), errors="coerce")
        bad(
            ints[column].isna().to_numpy() | (ints[column] % 1 != 0).to_numpy(),
            column,
            "is not an integer",
        )
    bad((ints["pid"] < JUNK_PID).to_numpy(), "pid", "must be >= -1")
    bad(
        (ints["camid"] < NO_CAMERA).to_numpy(),
        "camid",
        f"must be >= 0 (camid is 0-based), or {NO_CAMERA} for an unknown camera",
    )
    splits = table["split"].str.strip()
    bad(~splits.isin(SPLITS).to_numpy(), "split", f"is not one of {', '.join(SPLITS)}")
    keep = (ints["pid"] != JUNK_PID).to_numpy()
    rows = list(
        zip(
            paths[keep],
            ints["pid"][keep].astype(np.int64),
            ints["camid"][keep].astype(np.int64),
            splits[keep],
            strict=True,
        )
    )
    sources = {split: f"{csv_path} (split {split})" for split in SPLITS}
    return finalize_table(rows, root, "csv", sources, check_exists=True)


def list_lines(path: Path, fmt: str, sep: str | None = None) -> Iterator[tuple[str, list[str]]]:
    """(`file:line`, fields split at `sep`) of each non-blank line of a dataset's list file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"{fmt} dataset: missing list file {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"{fmt} dataset: cannot read list file {path}: {err}") from err
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield f"{path}:{number}", [f.strip() for f in line.strip().split(sep)]


def finalize_table(
    rows: list[tuple[str, int, int, str]],
    root: Path,
    fmt: str,
    sources: Mapping[str, str],
    *,
    check_exists: bool,
    splits: tuple[str, ...] = SPLITS,
) -> pd.DataFrame:
    """Apply the checks shared by every layout and give the table its dtypes and order.

    `rows` are (path, pid, camid, split); `sources` names, per split, where its rows came from;
    each of `splits` must hold an image (test-only layouts have no train split)."""
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    df = df.astype({"path": str, "pid": np.int64, "camid": np.int64, "split": str})
    for path, split in zip(df["path"], df["split"], strict=True):
        problem = path_problem(path)
        if problem:
            raise DatasetError(f"{fmt} dataset: {sources[split]}: image path {path!r} {problem}")
    for split in splits:
        if not (df["split"] == split).any():
            raise DatasetError(f"{fmt} dataset {root}: split '{split}' is empty ({sources[split]})")
    distractors = df[(df["pid"] == DISTRACTOR_PID) & (df["split"] != "gallery")]
    if len(distractors):
        first = distractors.iloc[0]
        raise DatasetError(
            f"{fmt} dataset {root}: pid 0 marks distractors, allowed in the gallery only, but "
            f"{first['path']} is in split '{first['split']}' ({len(distractors)} such images)"
        )
    if check_exists:
        missing = [p for p in df["path"] if not confined(root, p).is_file()]
        if missing:
            shown = ", ".join(missing[:3])
            raise DatasetError(
                f"{fmt} dataset {root}: {len(missing)} listed image(s) do not exist, e.g. {shown}"
            )
    return df.sort_values(["split", "path"], kind="stable").reset_index(drop=True)


def resolve_test_set(fmt: str, test_set: str = "") -> str:
    """The test set that `read_dataset(root, fmt, test_set)` reads: `test_set`, or the
    layout's default when it is empty ("" for a layout with one test set)."""
    try:
        found = READERS.lookup(fmt)
    except ValueError as err:
        raise DatasetError(str(err)) from None
    if not found.test_sets:
        if test_set:
            raise DatasetError(
                f"{fmt} dataset has one test set: data.test_set must be empty, not {test_set!r}"
            )
        return ""
    if not test_set:
        return found.test_sets[0]
    if test_set not in found.test_sets:
        raise DatasetError(
            f"{fmt} dataset has no test set {test_set!r}; choose one of "
            + ", ".join(found.test_sets)
        )
    return test_set


def read_dataset(root: str | Path, fmt: str, test_set: str = "") -> pd.DataFrame:
    """Read the dataset at `root` in layout `fmt` (a key of READERS) into a label table;
    `test_set` picks one of the layout's test sets (empty: its default)."""
    chosen = resolve_test_set(fmt, test_set)
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist")
    read = READERS[fmt].read
    return read(root, chosen) if chosen else read(root)


# the other layouts register themselves on import (they use the helpers above)
from reid_core.data import partial_readers, vehicle_readers  # noqa: E402, F401
