"""The manifest: one Parquet table of every image the pipeline uses, with its labels and size.

Columns are MANIFEST_COLUMNS; the writer's run facts (format, fingerprint, ...) travel in the
Parquet schema metadata under the key b"reidflow", so the file describes itself.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from reid_core.atomic import atomic_output
from reid_core.data.errors import DatasetError
from reid_core.data.images import open_image
from reid_core.data.paths import confined, path_problem
from reid_core.data.readers import read_dataset

MANIFEST_COLUMNS = ("path", "pid", "camid", "split", "domain", "width", "height")
METADATA_KEY = b"reidflow"
EVAL_SPLITS = ("query", "gallery")
_INT_COLUMNS = ("pid", "camid", "width", "height")
_THREADS = 4


def _image_size(path: Path, strict: bool) -> tuple[int, int]:
    try:
        with open_image(path) as image:  # lazy: reads the header only
            return image.size
    except DatasetError:
        if strict:
            raise
        return 0, 0


def build_manifest(
    root: str | Path,
    fmt: str,
    domain: str = "source",
    *,
    strict: bool = True,
    test_set: str = "",
) -> pd.DataFrame:
    """Read the dataset (its `test_set`, if the layout has several) and add each image's size
    (from its header) and the `domain` label.

    An unreadable image raises a DatasetError; with `strict=False` its size is 0×0 instead,
    so a validation that decodes every image can report all of them at once.
    """
    root = Path(root)
    df = read_dataset(root, fmt, test_set)
    with ThreadPoolExecutor(_THREADS) as pool:
        sizes = list(pool.map(lambda p: _image_size(confined(root, p), strict), df["path"]))
    df["domain"] = pd.Series([domain] * len(df), dtype=str)
    size_array = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
    df["width"] = size_array[:, 0]
    df["height"] = size_array[:, 1]
    return df.loc[:, list(MANIFEST_COLUMNS)]


def _file_digest(path: Path) -> tuple[int, str]:
    try:
        with open(path, "rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
        return path.stat().st_size, digest
    except OSError as err:
        raise DatasetError(f"cannot read image {path}: {err}") from err


def dataset_fingerprint(root: str | Path, df: pd.DataFrame) -> str:
    """The content version of the images `df` lists: sha256 over (path, size, sha256) sorted.

    Any changed byte, renamed or added/removed image changes it; labels do not (see
    `eval_set_hash` for those).
    """
    root = Path(root)
    paths = sorted(set(df["path"]))
    with ThreadPoolExecutor(_THREADS) as pool:
        facts = list(pool.map(_file_digest, [confined(root, p) for p in paths]))
    total = hashlib.sha256()
    for path, (size, digest) in zip(paths, facts, strict=True):
        total.update(f"{path}\t{size}\t{digest}\n".encode())
    return total.hexdigest()


def eval_set_hash(df: pd.DataFrame) -> str:
    """sha256 of the sorted query+gallery rows (path, pid, camid, split).

    Two evaluations are comparable only when their eval sets hash the same.
    """
    rows = df.loc[df["split"].isin(EVAL_SPLITS), ["split", "path", "pid", "camid"]]
    rows = rows.sort_values(["split", "path", "pid", "camid"], kind="stable")
    lines = (
        rows["split"].astype(str)
        + "\t"
        + rows["path"].astype(str)
        + "\t"
        + rows["pid"].astype(np.int64).astype(str)
        + "\t"
        + rows["camid"].astype(np.int64).astype(str)
        + "\n"
    )
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _check_columns(df: pd.DataFrame, where: str) -> None:
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise DatasetError(f"manifest {where} lacks column(s) {', '.join(missing)}")
    not_int = [c for c in _INT_COLUMNS if not pd.api.types.is_integer_dtype(df[c])]
    if not_int:
        raise DatasetError(f"manifest {where}: column(s) {', '.join(not_int)} must be integers")


def write_manifest(df: pd.DataFrame, path: str | Path, metadata: Mapping[str, str]) -> None:
    """Write the manifest as Parquet (atomically), `metadata` as JSON in the schema metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    _check_columns(df, f"to write to {path}")
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"manifest metadata {key!r}: keys and values must be strings")
    table = pa.Table.from_pandas(df.loc[:, list(MANIFEST_COLUMNS)], preserve_index=False)
    schema_metadata = dict(table.schema.metadata or {})
    schema_metadata[METADATA_KEY] = json.dumps(dict(metadata), sort_keys=True).encode()
    table = table.replace_schema_metadata(schema_metadata)
    with atomic_output(path) as tmp:
        pq.write_table(table, tmp)


def read_manifest(path: str | Path) -> tuple[pd.DataFrame, dict[str, str]]:
    """Read a manifest written by `write_manifest`: the table and its metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"manifest {path} does not exist")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise DatasetError(f"manifest {path} is not a readable Parquet file: {err}") from err
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    metadata: dict[str, str] = {}
    if raw is not None:
        try:
            metadata = json.loads(raw)
        except ValueError as err:
            raise DatasetError(f"manifest {path}: metadata {METADATA_KEY!r} is not JSON") from err
        if not isinstance(metadata, dict):
            raise DatasetError(f"manifest {path}: metadata {METADATA_KEY!r} is not an object")
    df = table.to_pandas()
    _check_columns(df, str(path))
    for row, relative in enumerate(df["path"]):
        problem = path_problem(relative) if isinstance(relative, str) else "is not a string"
        if problem:
            raise DatasetError(f"manifest {path}: row {row}: image path {relative!r} {problem}")
    return df.loc[:, list(MANIFEST_COLUMNS)], metadata
