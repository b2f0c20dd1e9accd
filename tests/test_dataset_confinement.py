"""A dataset's own files cannot make reidflow read a file outside the dataset folder: list
files, CSV and Parquet manifests with absolute paths, `..` or symbolic links leading out."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reid_core.data.errors import DatasetError
from reid_core.data.images import load_images
from reid_core.data.manifest import build_manifest, read_manifest, write_manifest
from reid_core.data.paths import confined, path_problem
from reid_core.data.readers import read_dataset
from tests.fixtures_data import make_csv_like, make_market_like, make_msmt_like, write_jpeg


@pytest.fixture
def outside(tmp_path):
    """An image outside every dataset folder: what an attacker would have read."""
    return write_jpeg(tmp_path / "elsewhere" / "secret.jpg", 7)


def test_an_msmt_list_cannot_point_out_of_the_dataset(tmp_path, outside):
    root = make_msmt_like(tmp_path / "msmt")
    with (root / "list_gallery.txt").open("a") as handle:
        handle.write("../../elsewhere/0001_000_01_0303morning_0001_0.jpg 1\n")
    with pytest.raises(DatasetError, match=r"list_gallery.txt.*'\.\.'"):
        read_dataset(root, "msmt17")


@pytest.mark.parametrize("bad", ["/etc/passwd", "../elsewhere/secret.jpg", "a/../../x.jpg"])
def test_a_csv_row_cannot_point_out_of_the_dataset(tmp_path, outside, bad):
    root = make_csv_like(tmp_path / "csv")
    with (root / "manifest.csv").open("a") as handle:
        handle.write(f"{bad},1,0,gallery\n")
    with pytest.raises(DatasetError, match="manifest.csv line .*column path"):
        read_dataset(root, "csv")


def test_a_symbolic_link_out_of_the_dataset_is_refused(tmp_path, outside):
    root = make_market_like(tmp_path / "market")
    link = root / "bounding_box_test" / "0001_c2s1_000999_00.jpg"
    link.symlink_to(outside)
    with pytest.raises(DatasetError, match="0001_c2s1_000999_00.jpg leads outside"):
        build_manifest(root, "market1501")
    with pytest.raises(DatasetError, match="leads outside"):
        load_images(root, ["bounding_box_test/0001_c2s1_000999_00.jpg"], 32, 16)


def test_a_link_inside_the_dataset_is_fine(tmp_path):
    root = make_market_like(tmp_path / "market")
    image = next((root / "bounding_box_test").glob("*.jpg"))
    (root / "alias.jpg").symlink_to(image)
    assert confined(root, "alias.jpg") == root / "alias.jpg"


def test_a_tampered_parquet_manifest_is_refused_before_any_image_is_read(tmp_path, outside):
    root = make_market_like(tmp_path / "market")
    df = build_manifest(root, "market1501")
    df.loc[0, "path"] = "../elsewhere/secret.jpg"
    write_manifest(df, tmp_path / "m.parquet", {})
    with pytest.raises(DatasetError, match=r"m.parquet: row 0: .*'\.\.'"):
        read_manifest(tmp_path / "m.parquet")


@given(st.text(alphabet="ab./\\:", max_size=12))
def test_no_accepted_path_leaves_the_root(relative):
    if path_problem(relative) is None:
        parts = relative.replace("\\", "/").split("/")
        assert ".." not in parts and not relative.startswith(("/", "\\"))
