"""Partial-REID, Partial-iLIDS and Occluded-REID read from their exact layouts; bad ones named."""

from __future__ import annotations

import pytest

from reid_core.data.cameras import NO_CAMERA
from reid_core.data.errors import DatasetError
from reid_core.data.manifest import build_manifest
from reid_core.data.readers import read_dataset
from reid_core.validation.suite import validate_manifest
from tests.fixtures_data import PARTIAL_FOLDERS, make_partial_like

FORMATS = list(PARTIAL_FOLDERS)


@pytest.mark.parametrize("fmt", FORMATS)
def test_partial_queries_face_a_whole_body_gallery_without_cameras_or_train(fmt, tmp_path):
    root = make_partial_like(tmp_path, fmt, n_ids=3, per_id=2)
    df = read_dataset(root, fmt)
    query_dir, gallery_dir = PARTIAL_FOLDERS[fmt]
    assert set(df["split"]) == {"query", "gallery"}
    assert df.loc[df["split"] == "query", "path"].str.startswith(query_dir + "/").all()
    assert df.loc[df["split"] == "gallery", "path"].str.startswith(gallery_dir + "/").all()
    assert (df["camid"] == NO_CAMERA).all()
    # 001_01 is pid 1 in the dataset, stored as 2: pid 0 is the manifest's distractor mark
    assert sorted(set(df["pid"])) == [2, 3, 4]
    assert len(df) == 3 * 2 * 2
    manifest = build_manifest(root, fmt)
    report = validate_manifest(
        manifest, root, min_side=16, max_side=4096, required_splits=("query", "gallery")
    )
    assert report.success, report.failures()


BREAKAGES = {
    "missing-gallery-folder": (lambda root, q, g: _remove_tree(root / g), "missing folder"),
    "bad-name": (
        lambda root, q, g: next((root / q).rglob("*_01.*")).rename(root / q / "front.jpg"),
        "is not named <pid>_<number>",
    ),
    "query-without-gallery": (
        lambda root, q, g: [p.unlink() for p in (root / g).rglob("001_*")],
        "1 query identities have no whole-body image",
    ),
    "no-queries": (
        lambda root, q, g: [p.unlink() for p in (root / q).rglob("*_*.*")],
        "split 'query' is empty",
    ),
}


def _remove_tree(path):
    for child in sorted(path.rglob("*"), reverse=True):
        child.unlink() if child.is_file() else child.rmdir()
    path.rmdir()


@pytest.mark.parametrize("breakage", list(BREAKAGES))
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_malformed_partial_dataset_is_named(fmt, breakage, tmp_path):
    root = make_partial_like(tmp_path, fmt)
    damage, message = BREAKAGES[breakage]
    damage(root, *PARTIAL_FOLDERS[fmt])
    with pytest.raises(DatasetError, match=f"{fmt} dataset") as err:
        read_dataset(root, fmt)
    assert message in str(err.value)
