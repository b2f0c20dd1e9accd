"""The manifest: image sizes, Parquet round trip with metadata, content hashes, class labels."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reid_core.data.errors import DatasetError
from reid_core.data.manifest import (
    MANIFEST_COLUMNS,
    build_manifest,
    dataset_fingerprint,
    eval_set_hash,
    read_manifest,
    write_manifest,
)
from reid_core.data.splits import contiguous_labels
from tests.fixtures_data import SIZE, make_market_like, make_veri_like, write_jpeg


@pytest.fixture
def market(tmp_path):
    root = make_market_like(tmp_path / "market")
    return root, build_manifest(root, "market1501", domain="target")


def test_manifest_has_columns_sizes_and_domain(market):
    _, df = market
    assert tuple(df.columns) == MANIFEST_COLUMNS
    assert (df["width"] == SIZE[0]).all() and (df["height"] == SIZE[1]).all()
    assert df["width"].dtype == np.int64 and df["height"].dtype == np.int64
    assert set(df["domain"]) == {"target"}


def test_sizes_come_from_each_image(tmp_path):
    root = make_veri_like(tmp_path)
    write_jpeg(root / "image_query" / "0004_c001_00016470_0.jpg", 3, size=(40, 30))
    df = build_manifest(root, "veri776")
    row = df[df["path"] == "image_query/0004_c001_00016470_0.jpg"].iloc[0]
    assert (row["width"], row["height"]) == (40, 30)
    assert set(df["domain"]) == {"source"}


def test_unreadable_image_is_named(tmp_path):
    root = make_market_like(tmp_path)
    (root / "query" / "0005_c1s1_001000_00.jpg").write_bytes(b"this is not a jpeg")
    with pytest.raises(DatasetError, match="0005_c1s1_001000_00.jpg"):
        build_manifest(root, "market1501")


def test_round_trip_keeps_rows_dtypes_and_metadata(market, tmp_path):
    _, df = market
    path = tmp_path / "out" / "manifest.parquet"
    metadata = {"format": "market1501", "fingerprint": "abc", "note": "ü"}
    write_manifest(df, path, metadata)
    back, meta = read_manifest(path)
    assert meta == metadata
    assert back.equals(df)
    assert list(back.dtypes.astype(str)) == list(df.dtypes.astype(str))
    assert sorted(p.name for p in path.parent.iterdir()) == ["manifest.parquet"]
    raw = pq.read_schema(path).metadata[b"reidflow"]
    assert b"fingerprint" in raw


def test_write_rejects_non_string_metadata(market, tmp_path):
    _, df = market
    with pytest.raises(TypeError, match="seed"):
        write_manifest(df, tmp_path / "m.parquet", {"seed": 3})
    assert not list(tmp_path.glob("*m.parquet*"))


def test_write_rejects_missing_columns(market, tmp_path):
    _, df = market
    with pytest.raises(DatasetError, match="domain"):
        write_manifest(df.drop(columns=["domain"]), tmp_path / "m.parquet", {})


def test_read_missing_or_bad_manifest_is_named(tmp_path):
    with pytest.raises(DatasetError, match="absent.parquet"):
        read_manifest(tmp_path / "absent.parquet")
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    with pytest.raises(DatasetError, match="bad.parquet"):
        read_manifest(bad)


def test_read_manifest_checks_columns(market, tmp_path):
    _, df = market
    path = tmp_path / "partial.parquet"
    pq.write_table(pa.Table.from_pandas(df.drop(columns=["height"]), preserve_index=False), path)
    with pytest.raises(DatasetError, match="partial.parquet.*height"):
        read_manifest(path)


def test_fingerprint_is_stable_and_ignores_row_order(market):
    root, df = market
    first = dataset_fingerprint(root, df)
    assert len(first) == 64
    assert dataset_fingerprint(root, df.sample(frac=1.0, random_state=0)) == first


def test_fingerprint_changes_when_one_byte_of_one_image_changes(market):
    root, df = market
    before = dataset_fingerprint(root, df)
    image = root / df["path"].iloc[5]
    data = bytearray(image.read_bytes())
    data[len(data) // 2] ^= 0x01
    image.write_bytes(bytes(data))
    assert dataset_fingerprint(root, df) != before


def test_fingerprint_names_a_missing_image(market):
    root, df = market
    (root / df["path"].iloc[0]).unlink()
    with pytest.raises(DatasetError, match=re.escape(df["path"].iloc[0])):
        dataset_fingerprint(root, df)


def test_eval_set_hash_covers_query_and_gallery_labels_only(market):
    _, df = market
    reference = eval_set_hash(df)
    assert eval_set_hash(df.iloc[::-1]) == reference
    train = df["split"] == "train"
    assert eval_set_hash(df[~train]) == reference
    relabelled = df.copy()
    relabelled.loc[train, "pid"] += 100
    assert eval_set_hash(relabelled) == reference
    moved = df.copy()
    moved.loc[moved.index[moved["split"] == "gallery"][0], "camid"] += 1
    assert eval_set_hash(moved) != reference


def test_labels_are_contiguous_by_sorted_pid():
    labels = contiguous_labels(np.array([50, 1, 3, 50, 1]))
    assert labels.dtype == np.int64
    assert labels.tolist() == [2, 0, 1, 2, 0]
