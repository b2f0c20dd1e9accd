"""A bad dataset fails in preprocess with a message naming the problem, and writes no manifest."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from reid_core.data.synth import SynthSpec, generate

pytestmark = pytest.mark.integration

TINY = Path(__file__).parents[1] / "configs" / "tiny.yaml"


@pytest.fixture(scope="module")
def clean_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("clean") / "ds"
    generate(root, SynthSpec(num_ids=8, num_cams=3, images_per_id=6, height=64, width=32))
    return root


def preprocess(root, tmp_path):
    env = {
        **os.environ,
        "GX_ANALYTICS_ENABLED": "false",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "reid_core.cli",
            "preprocess",
            "--dataset",
            str(root),
            "--manifest",
            str(tmp_path / "m.parquet"),
            "--report",
            str(tmp_path / "r.json"),
            "--config",
            str(TINY),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    return proc, tmp_path / "m.parquet"


def broken_copy(clean_dataset, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(clean_dataset, root)
    return root


def test_wrong_file_name(clean_dataset, tmp_path):
    root = broken_copy(clean_dataset, tmp_path)
    victim = next((root / "query").iterdir())
    victim.rename(root / "query" / "person7.jpg")
    proc, manifest = preprocess(root, tmp_path)
    assert proc.returncode != 0 and "person7.jpg" in proc.stderr
    assert not manifest.exists()


def test_missing_split(clean_dataset, tmp_path):
    root = broken_copy(clean_dataset, tmp_path)
    shutil.rmtree(root / "bounding_box_test")
    proc, manifest = preprocess(root, tmp_path)
    assert proc.returncode != 0 and "bounding_box_test" in proc.stderr
    assert not manifest.exists()


def test_corrupt_image(clean_dataset, tmp_path):
    root = broken_copy(clean_dataset, tmp_path)
    victim = sorted((root / "bounding_box_train").iterdir())[3]
    victim.write_bytes(b"\xff\xd8 definitely not a jpeg")
    proc, manifest = preprocess(root, tmp_path)
    assert proc.returncode != 0 and victim.name in proc.stderr
    assert not manifest.exists()


def test_query_identity_absent_from_gallery(clean_dataset, tmp_path):
    root = broken_copy(clean_dataset, tmp_path)
    pid = sorted((root / "query").iterdir())[0].name.split("_")[0]
    for path in (root / "bounding_box_test").glob(f"{pid}_*"):
        path.unlink()
    proc, manifest = preprocess(root, tmp_path)
    assert proc.returncode != 0
    assert f"query pid {int(pid)} has no gallery image from another camera" in proc.stderr
    assert not manifest.exists()


def test_no_dataset_from_an_empty_target_says_the_local_pipeline_needs_one(tmp_path):
    from reid_core.sources import fetch_dataset

    fetch_dataset(None, tmp_path / "target")
    proc, manifest = preprocess(tmp_path / "target", tmp_path)
    assert proc.returncode != 0
    assert "no dataset to preprocess (datasets.source is empty)" in proc.stderr
    assert "name one in params.yaml" in proc.stderr and "Traceback" not in proc.stderr
    assert not manifest.exists()


def test_every_unreadable_image_is_listed_and_a_stale_report_removed(clean_dataset, tmp_path):
    root = broken_copy(clean_dataset, tmp_path)
    proc, manifest = preprocess(root, tmp_path)  # a clean run leaves a report that passed
    assert proc.returncode == 0 and json.loads((tmp_path / "r.json").read_text())["success"]
    victims = sorted((root / "bounding_box_train").iterdir())[:3]
    victims[0].write_bytes(b"\xff\xd8 definitely not a jpeg")  # the header does not parse
    victims[1].write_bytes(victims[1].read_bytes()[:300])  # truncated after the header
    Image.new("1", (8000, 8000)).save(victims[2], format="PNG")  # more pixels than allowed
    proc, manifest = preprocess(root, tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    listed = json.loads((tmp_path / "r.json").read_text())["summary"]["undecodable_images"]
    assert sorted(Path(p).name for p in listed) == sorted(v.name for v in victims)
    assert not manifest.exists()
    # a run that fails before validation leaves no report at all, stale or new
    shutil.rmtree(root / "query")
    proc, _ = preprocess(root, tmp_path)
    assert proc.returncode == 2 and not (tmp_path / "r.json").exists()
    assert not (tmp_path / "r.html").exists()
