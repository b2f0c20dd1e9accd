"""One test set's features as `reid evaluate` writes them (`<features>/<set>.npz`), for
`reid index build --features` and for whoever analyses them.

The file is a NumPy archive of plain arrays (read with `allow_pickle=False`): for each split
`<split>_feats` (rows × dimensions, float), `<split>_pids`, `<split>_camids` (int64) and
`<split>_paths` (str, relative to the dataset folder), plus `normalized` (whether the rows
are L2-normalised) and `format_version`.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from reid_core.atomic import atomic_output

VERSION_KEY = "format_version"
SPLITS = ("query", "gallery")
COLUMNS = ("feats", "pids", "camids", "paths")


class FeaturesFileError(ValueError):
    """A features file that is missing, unreadable or not what `reid evaluate` writes; the
    message names the file."""


@dataclass(frozen=True, eq=False)
class SplitFeatures:
    """One split's features and, row for row, what each row is: pid, camera, image path.

    Made from arrays of any integer dtype (pids, camids) and str or str objects (paths); kept
    as int64 and str arrays. A ValueError says which array does not fit.
    """

    feats: np.ndarray  # rows × dimensions, float
    pids: np.ndarray
    camids: np.ndarray
    paths: np.ndarray

    def __post_init__(self) -> None:
        feats = np.asarray(self.feats)
        if feats.ndim != 2 or feats.shape[1] == 0 or not np.issubdtype(feats.dtype, np.floating):
            raise ValueError(
                f"feats must be rows × dimensions of floats, not {feats.shape} {feats.dtype}"
            )
        rows = len(feats)
        for name in ("pids", "camids", "paths"):
            column = np.asarray(getattr(self, name))
            if column.ndim != 1 or len(column) != rows:
                raise ValueError(
                    f"{name} has shape {column.shape}: it needs one entry per row of feats ({rows})"
                )
            if name == "paths":
                if column.dtype == object and all(isinstance(p, str) for p in column):
                    column = column.astype(str)
                if column.dtype.kind != "U":
                    raise ValueError(f"paths must be strings, not {column.dtype}")
            elif np.issubdtype(column.dtype, np.integer):
                column = column.astype(np.int64, copy=False)
            else:
                raise ValueError(f"{name} must be integers, not {column.dtype}")
            object.__setattr__(self, name, column)
        object.__setattr__(self, "feats", feats)

    def __len__(self) -> int:
        return len(self.feats)

    def metadata(self) -> dict[str, np.ndarray]:
        """What each row is, by name: paths, pids, camids."""
        return {"paths": self.paths, "pids": self.pids, "camids": self.camids}

    def take(self, rows: np.ndarray) -> SplitFeatures:
        """These rows, in this order."""
        return SplitFeatures(self.feats[rows], self.pids[rows], self.camids[rows], self.paths[rows])

    @classmethod
    def concat(cls, first: SplitFeatures, second: SplitFeatures) -> SplitFeatures:
        """The rows of `first`, then those of `second`."""
        columns = zip(
            (first.feats, first.pids, first.camids, first.paths),
            (second.feats, second.pids, second.camids, second.paths),
            strict=True,
        )
        return cls(*(np.concatenate(pair) for pair in columns))


@dataclass(frozen=True, eq=False)
class FeatureSet:
    """The query and gallery features of one test set."""

    WRITTEN_BY: ClassVar[str] = "reid evaluate"
    VERSION: ClassVar[int] = 1

    query: SplitFeatures
    gallery: SplitFeatures
    normalized: bool  # rows L2-normalised (evaluate writes them as the model gives them)

    def save(self, path: str | Path) -> Path:
        """Write the file (atomically); returns its path."""
        path = Path(path)
        arrays = {
            f"{split}_{column}": getattr(getattr(self, split), column)
            for split in SPLITS
            for column in COLUMNS
        }
        with atomic_output(path) as tmp, open(tmp, "wb") as f:
            np.savez(
                f,
                allow_pickle=False,
                **arrays,
                normalized=np.array(self.normalized),
                **{VERSION_KEY: np.array(self.VERSION)},
            )
        return path

    @classmethod
    def load(cls, path: str | Path) -> FeatureSet:
        """Both splits of the file at `path`; FeaturesFileError, naming the file, when it is
        missing, unreadable, of another version, or lacks or mismatches an array."""
        splits, normalized = _read(Path(path), SPLITS)
        return cls(splits["query"], splits["gallery"], normalized)

    @classmethod
    def load_split(cls, path: str | Path, split: str) -> SplitFeatures:
        """One split of the file (the other is not read), refused as `load` refuses it."""
        if split not in SPLITS:
            raise ValueError(f"split must be {' or '.join(SPLITS)}, not {split!r}")
        return _read(Path(path), (split,))[0][split]


def _read(path: Path, splits: tuple[str, ...]) -> tuple[dict[str, SplitFeatures], bool]:
    """The named splits of the features file `path`, and its `normalized` flag."""
    where, wanted = FeatureSet.WRITTEN_BY, FeatureSet.VERSION
    if not path.is_file():
        raise FeaturesFileError(f"{path}: no such features file (written by {where})")
    names = [f"{split}_{column}" for split in splits for column in COLUMNS]
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise FeaturesFileError(f"{path}: not a NumPy archive (.npz) as {where} writes it")
        with data:
            absent = [key for key in [*names, "normalized"] if key not in data.files]
            if absent:
                raise FeaturesFileError(
                    f"{path}: not a features file of {where}: missing {', '.join(absent)} "
                    f"(it has {', '.join(data.files) or 'nothing'})"
                )
            if VERSION_KEY not in data.files:
                raise FeaturesFileError(
                    f"{path}: has no {VERSION_KEY}: written by an older reidflow or not by "
                    f"{where}; run {where} again"
                )
            version = data[VERSION_KEY]
            if version.shape != () or version.dtype.kind not in "iu" or version != wanted:
                raise FeaturesFileError(
                    f"{path}: format version {version.tolist()!r}, this reidflow reads version "
                    f"{wanted}: run {where} again"
                )
            normalized = data["normalized"]
            arrays = {key: data[key] for key in names}
    except FeaturesFileError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise FeaturesFileError(f"{path}: unreadable features file ({err})") from None
    if normalized.shape != () or normalized.dtype != bool:
        raise FeaturesFileError(f"{path}: normalized must be one bool, not {normalized!r}")
    out = {}
    for split in splits:
        try:
            out[split] = SplitFeatures(**{c: arrays[f"{split}_{c}"] for c in COLUMNS})
        except ValueError as err:
            raise FeaturesFileError(f"{path}: {split}_{err}") from None
    return out, bool(normalized)
