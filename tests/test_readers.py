"""Dataset readers: each layout read into the same label table, each bad dataset named."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from reid_core.data.cameras import NO_CAMERA
from reid_core.data.errors import DatasetError
from reid_core.data.readers import READERS, read_dataset
from tests.fixtures_data import (
    make_csv_like,
    make_duke_like,
    make_market_like,
    make_msmt_like,
    make_partial_like,
    make_vehicles_like,
    make_veri_like,
    write_jpeg,
)


def check_table(df, root: Path, train: bool = True) -> None:
    """The contract every reader keeps (test-only layouts have no train split)."""
    assert list(df.columns) == ["path", "pid", "camid", "split"]
    assert df["pid"].dtype == np.int64
    assert df["camid"].dtype == np.int64
    assert set(df["split"]) == {"train", "query", "gallery"} - (set() if train else {"train"})
    assert (df["camid"] >= NO_CAMERA).all()
    assert list(df.itertuples(index=False)) == list(
        df.sort_values(["split", "path"]).itertuples(index=False)
    )
    assert all((root / p).is_file() and "\\" not in p for p in df["path"])


GENERATORS = {
    "market1501": make_market_like,
    "dukemtmc": make_duke_like,
    "veri776": make_veri_like,
    "msmt17": make_msmt_like,
    "csv": make_csv_like,
    # the vehicle layouts come from the project's own generator (tests/test_vehicle_readers.py)
    "vehicleid": lambda root: make_vehicles_like(root, "vehicleid"),
    "veriwild": lambda root: make_vehicles_like(root, "veriwild"),
    "partial_reid": lambda root: make_partial_like(root, "partial_reid"),
    "partial_ilids": lambda root: make_partial_like(root, "partial_ilids"),
    "occluded_reid": lambda root: make_partial_like(root, "occluded_reid"),
}
TEST_ONLY = {"partial_reid", "partial_ilids", "occluded_reid"}


@pytest.mark.parametrize("fmt", list(READERS))
def test_every_registered_format_reads_its_generated_layout(fmt, tmp_path):
    assert fmt in GENERATORS, f"add a generator of the {fmt} layout to tests/fixtures_data.py"
    root = GENERATORS[fmt](tmp_path)
    check_table(read_dataset(root, fmt), root, fmt not in TEST_ONLY)


def test_market_drops_junk_keeps_distractors_in_gallery_and_ignores_other_files(tmp_path):
    root = make_market_like(tmp_path, n_train=3, n_test=3, cameras=3, junk=2, distractors=2)
    df = read_dataset(root, "market1501")
    check_table(df, root)
    counts = df["split"].value_counts().to_dict()
    assert counts == {"train": 9, "query": 3, "gallery": 3 * 2 + 2}
    assert -1 not in set(df["pid"])
    assert set(df.loc[df["pid"] == 0, "split"]) == {"gallery"}
    assert not df["path"].str.endswith(("Thumbs.db", ".json")).any()
    row = df[df["path"] == "query/0004_c1s1_001000_00.jpg"].iloc[0]
    assert (row["pid"], row["camid"], row["split"]) == (4, 0, "query")
    assert set(df.loc[df["split"] == "train", "camid"]) == {0, 1, 2}


def test_duke_reads_eight_cameras_zero_based(tmp_path):
    root = make_duke_like(tmp_path, cameras=8)
    df = read_dataset(str(root), "dukemtmc")
    check_table(df, root)
    assert sorted(set(df["camid"])) == list(range(8))
    row = df[df["path"] == "bounding_box_test/0004_c2_f0046210.jpg"].iloc[0]
    assert (row["pid"], row["camid"]) == (4, 1)


def test_veri_parses_three_digit_cameras(tmp_path):
    root = make_veri_like(tmp_path, cameras=3)
    df = read_dataset(root, "veri776")
    check_table(df, root)
    row = df[df["path"] == "image_query/0004_c001_00016470_0.jpg"].iloc[0]
    assert (row["pid"], row["camid"], row["split"]) == (4, 0, "query")
    assert sorted(set(df["camid"])) == [0, 1, 2]


@pytest.mark.parametrize("v2", [False, True])
def test_msmt_merges_val_into_train_and_takes_camera_from_third_field(tmp_path, v2):
    root = make_msmt_like(tmp_path, n_train=3, n_test=2, cameras=3, v2=v2)
    df = read_dataset(root, "msmt17")
    check_table(df, root)
    train_dir, test_dir = ("mask_train_v2", "mask_test_v2") if v2 else ("train", "test")
    train = df[df["split"] == "train"]
    assert len(train) == 9  # 2 identities from list_train.txt + 1 from list_val.txt, 3 cameras
    assert train["path"].str.startswith(f"{train_dir}/").all()
    assert df.loc[df["split"] != "train", "path"].str.startswith(f"{test_dir}/").all()
    # MSMT17 numbers identities from 0; the manifest keeps 0 for distractors, so pids are +1.
    assert sorted(set(train["pid"])) == [1, 2, 3]
    assert 0 not in set(df["pid"])
    first = df[df["path"].str.endswith("0000_000_01_0303morning_0000_0.jpg")].iloc[0]
    assert (first["pid"], first["camid"], first["split"]) == (1, 0, "train")
    assert set(df.loc[df["split"] == "query", "camid"]) == {0}


def test_csv_reads_rows_as_given(tmp_path):
    root = make_csv_like(tmp_path, cameras=3)
    df = read_dataset(root, "csv")
    check_table(df, root)
    row = df[df["path"] == "images/query/4_0_9.jpg"].iloc[0]
    assert (row["pid"], row["camid"], row["split"]) == (4, 0, "query")
    assert len(df) == 9 + 3 + 6


def test_unknown_format_lists_the_known_ones(tmp_path):
    with pytest.raises(DatasetError, match="known: market1501, dukemtmc, veri776, msmt17, csv"):
        read_dataset(tmp_path, "cuhk03")


def test_missing_root_is_named(tmp_path):
    with pytest.raises(DatasetError, match="nowhere"):
        read_dataset(tmp_path / "nowhere", "market1501")


def test_malformed_image_name_is_named(tmp_path):
    root = make_market_like(tmp_path)
    write_jpeg(root / "query" / "person_1.jpg", 1)
    with pytest.raises(DatasetError, match="person_1.jpg"):
        read_dataset(root, "market1501")


def test_missing_folder_is_named(tmp_path):
    root = make_veri_like(tmp_path)
    shutil.rmtree(root / "image_query")
    with pytest.raises(DatasetError, match="image_query/"):
        read_dataset(root, "veri776")


def test_empty_split_is_named(tmp_path):
    root = make_market_like(tmp_path)
    for image in (root / "query").iterdir():
        image.unlink()
    with pytest.raises(DatasetError, match="split 'query' is empty.*query"):
        read_dataset(root, "market1501")


def test_split_of_only_junk_counts_as_empty(tmp_path):
    root = make_duke_like(tmp_path, cameras=2)
    for image in (root / "query").iterdir():
        image.unlink()
    write_jpeg(root / "query" / "-1_c1_f0000001.jpg", 1)
    with pytest.raises(DatasetError, match="split 'query' is empty"):
        read_dataset(root, "dukemtmc")


def test_distractor_outside_gallery_is_rejected(tmp_path):
    root = make_market_like(tmp_path)
    write_jpeg(root / "query" / "0000_c1s1_000009_00.jpg", 9)
    with pytest.raises(DatasetError, match=r"query/0000_c1s1_000009_00\.jpg"):
        read_dataset(root, "market1501")


def test_camera_zero_is_rejected(tmp_path):
    root = make_market_like(tmp_path)
    write_jpeg(root / "query" / "0004_c0s1_000009_00.jpg", 9)
    with pytest.raises(DatasetError, match="0004_c0s1_000009_00.jpg"):
        read_dataset(root, "market1501")


def test_missing_msmt_list_file_is_named(tmp_path):
    root = make_msmt_like(tmp_path)
    (root / "list_query.txt").unlink()
    with pytest.raises(DatasetError, match="list_query.txt"):
        read_dataset(root, "msmt17")


def test_missing_msmt_image_folder_is_named(tmp_path):
    root = make_msmt_like(tmp_path)
    shutil.rmtree(root / "test")
    with pytest.raises(DatasetError, match="test/ or mask_test_v2/"):
        read_dataset(root, "msmt17")


def test_msmt_listed_image_that_does_not_exist_is_named(tmp_path):
    root = make_msmt_like(tmp_path)
    with (root / "list_gallery.txt").open("a") as handle:
        handle.write("0009/0009_999_02_0303morning_0999_0.jpg 9\n")
    with pytest.raises(DatasetError, match="0009_999_02_0303morning_0999_0.jpg"):
        read_dataset(root, "msmt17")


def test_malformed_msmt_line_is_named_with_its_line_number(tmp_path):
    root = make_msmt_like(tmp_path)
    with (root / "list_query.txt").open("a") as handle:
        handle.write("0001/0001_050_x_morning.jpg 1\n")
    lines = (root / "list_query.txt").read_text().count("\n")
    with pytest.raises(DatasetError, match=rf"list_query.txt:{lines}"):
        read_dataset(root, "msmt17")


def test_csv_missing_column_is_named(tmp_path):
    root = make_csv_like(tmp_path)
    csv = root / "manifest.csv"
    csv.write_text(csv.read_text().replace("path,pid,camid,split", "path,pid,cam,split"))
    with pytest.raises(DatasetError, match="manifest.csv lacks column.*camid"):
        read_dataset(root, "csv")


def test_csv_bad_split_value_is_named_with_its_line(tmp_path):
    root = make_csv_like(tmp_path)
    csv = root / "manifest.csv"
    lines = csv.read_text().splitlines()
    lines[3] = lines[3].rsplit(",", 1)[0] + ",val"
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match="line 4, column split: 'val'"):
        read_dataset(root, "csv")


def test_csv_non_integer_pid_is_named(tmp_path):
    root = make_csv_like(tmp_path)
    csv = root / "manifest.csv"
    lines = csv.read_text().splitlines()
    path, _, camid, split = lines[2].split(",")
    lines[2] = f"{path},abc,{camid},{split}"
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match="line 3, column pid: 'abc'"):
        read_dataset(root, "csv")


def test_csv_missing_file_is_named(tmp_path):
    root = make_csv_like(tmp_path)
    (root / "manifest.csv").unlink()
    with pytest.raises(DatasetError, match="manifest.csv"):
        read_dataset(root, "csv")
