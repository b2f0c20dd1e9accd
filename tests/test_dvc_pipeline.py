"""The local pipeline through real DVC: `dvc repro` in a copy of the project on the tiny config.

One module-scoped copy is reproduced once and shared; the tests below then run in file order
against it (no-op repro, a parameter change, push/pull through the local remote, and last, the
destructive one: a corrupt dataset).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from reid_core.artifacts import EvaluationRecord, PromotionRecord
from reid_core.stages.graph import GRAPH
from tests.support.project import Project, copy_project, digest

pytestmark = pytest.mark.integration

# Everything downstream of the teacher's training (dvc.yaml): what a train.* change re-runs.
TRAIN_AND_DOWNSTREAM = {
    "train",
    "distill",
    "adapt",
    "evaluate@teacher",
    "evaluate@student",
    "evaluate@adapted",
    "export",
    "promote",
}
# Each model's evaluation and its test sets, the primary one first (the graph dvc.yaml follows).
TEST_SETS = {e.model: list(e.test_sets) for e in GRAPH.evaluations}
RUNNING = re.compile(r"^Running stage '([^']+)':", re.MULTILINE)


def _ran(output: str) -> set[str]:
    return set(RUNNING.findall(output))


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_config, venv_env) -> Project:
    """A git-initialised copy of the project with params.yaml = tiny over params, reproduced."""
    root = tmp_path_factory.mktemp("project")
    project = copy_project(root, yaml.safe_load(tiny_config.read_text()), venv_env())
    params = yaml.safe_load((root / "params.yaml").read_text())
    assert not Path(params["triton"]["repository"]).is_absolute()
    assert not (root / ".dvc" / "cache").exists() and not (root / ".dvcstore").exists()
    project.first_repro = project.run("dvc", "repro", run_id="dvc-test-first").stdout
    return project


def test_first_repro_runs_every_stage_and_writes_its_outputs(project):
    stages = set(project.run("dvc", "stage", "list", "--name-only").stdout.split())
    assert {"fetch@source", "fetch@target", "preprocess@source", "preprocess@target"} <= stages
    assert TRAIN_AND_DOWNSTREAM.issubset(stages)
    assert _ran(project.first_repro) == stages

    root = project.root
    for name, test_sets in TEST_SETS.items():
        metrics = EvaluationRecord.load_file(root / "reports" / "eval" / f"{name}.json")
        assert metrics.test_set == test_sets[0]
        assert sorted(metrics.test_sets) == sorted(test_sets)
        for test_set in test_sets:
            for key in ("rank1", "mAP", "mINP"):
                value = metrics.test_sets[test_set].metrics[key]
                assert 0.0 <= value <= 1.0, (name, test_set, key, value)
        report = root / "reports" / "eval" / name
        rows = [line for line in (report / "metrics.md").read_text().splitlines()[4:] if line]
        assert [row.split("|")[1].strip() for row in rows[: len(test_sets)]] == test_sets
        assert (report / "report.html").is_file()
        assert {p.stem for p in (root / "work" / "features" / name).glob("*.npz")} == set(test_sets)
    decision = PromotionRecord.load_file(root / "reports" / "promotion.json")
    model_name = yaml.safe_load((root / "params.yaml").read_text())["promote"]["model_name"]
    assert decision.model_name == model_name
    assert (root / "serving" / "model_repository" / model_name / "1" / "model.onnx").is_file()
    assert (root / "work" / "models" / "teacher" / "model.safetensors").is_file()
    assert (root / "work" / "manifests" / "source.parquet").is_file()
    assert (root / "work" / "manifests" / "target.parquet").is_file()
    assert (root / ".mlflow").is_dir(), "the default MLflow store lives under the project"

    summary = project.run("reid", "summary").stdout
    for name, test_sets in TEST_SETS.items():
        for test_set in test_sets:
            assert f"{name} @ {test_set}" in summary, summary
    assert "reports/eval/student/report.html" in summary


def test_second_repro_runs_nothing(project):
    assert project.status() == {}
    again = project.run("dvc", "repro", run_id="dvc-test-noop").stdout
    assert _ran(again) == set()
    assert "Data and pipelines are up to date" in again


def test_changing_the_learning_rate_reruns_training_and_downstream_only(project):
    params_path = project.root / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["train"]["solver"]["lr"] *= 2
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))

    # dvc sees only train's own parameter change; the rest is stale through train's outputs.
    assert set(project.status()) == {"train"}
    output = project.run("dvc", "repro", run_id="dvc-test-lr").stdout
    assert _ran(output) == TRAIN_AND_DOWNSTREAM
    for stage in ("fetch@source", "fetch@target", "preprocess@source", "preprocess@target"):
        assert f"Stage '{stage}' didn't change, skipping" in output
    assert project.status() == {}


def test_push_then_pull_restores_the_dataset_byte_for_byte(project):
    dataset = project.root / "data" / "datasets" / "source"
    before = digest(dataset)
    project.run("dvc", "push")
    assert any((project.root / ".dvcstore").rglob("*.dir")), "the remote holds no directory"

    shutil.rmtree(dataset)
    shutil.rmtree(project.root / ".dvc" / "cache")
    project.run("dvc", "pull", "data/datasets/source")
    assert digest(dataset) == before
    # The rest of the emptied cache comes back from the remote too: every output was pushed.
    assert "fetch@target" in project.status()  # 'not in cache' until fetched
    project.run("dvc", "fetch")
    assert project.status() == {}


def test_a_corrupt_query_image_stops_the_pipeline_in_preprocess(project):
    root = project.root
    downstream = [
        root / "work" / "models" / "teacher" / "model.safetensors",
        root / "work" / "models" / "student" / "model.safetensors",
        root / "reports" / "eval" / "student.json",
        root / "reports" / "promotion.json",
    ]
    before = {p: digest(p) for p in downstream}

    victim = sorted((root / "data" / "datasets" / "source" / "query").glob("*.jpg"))[0]
    victim.unlink()  # a new file, so no cache entry or link is touched
    victim.write_bytes(b"this is not a JPEG \x00\xff" * 20)
    # The dataset changed: record the new version, as `dvc add`/`dvc commit` would for real data.
    project.run("dvc", "commit", "--force", "fetch@source")
    # Stale: every stage that reads the source dataset (every evaluation has it as a test set);
    # the target domain's stages are not.
    assert set(project.status()) == {
        "preprocess@source",
        "train",
        "distill",
        "evaluate@teacher",
        "evaluate@student",
        "evaluate@adapted",
        "export",
    }

    proc = project.run("dvc", "repro", check=False, run_id="dvc-test-corrupt")
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert victim.name in output
    assert _ran(proc.stdout) == {"preprocess@source"}
    assert not (root / "work" / "manifests" / "source.parquet").exists()
    assert {p: digest(p) for p in downstream} == before


def test_pointing_a_dataset_at_a_local_folder_is_a_params_edit(project):
    root = project.root
    project.run("reid", "data", "synth", "incoming/dukelike", "--style", "dusk", "--seed", "7")
    params_path = root / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["datasets"]["target"] = "incoming/dukelike"
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))

    assert "fetch@target" in project.status()
    output = project.run("dvc", "repro", "preprocess@target", run_id="dvc-test-local").stdout
    assert _ran(output) == {"fetch@target", "preprocess@target"}
    fetched = root / "data" / "datasets" / "target"
    assert digest(fetched / "query") == digest(root / "incoming" / "dukelike" / "query")
    record = json.loads((fetched / ".fetch.json").read_text())
    assert (record["kind"], record["reference"]) == ("local", "incoming/dukelike")
    # The manifest carries the fetch record on to the checkpoints and the registry.
    import pyarrow.parquet as pq

    metadata = pq.read_schema(root / "work" / "manifests" / "target.parquet").metadata
    lineage = json.loads(json.loads(metadata[b"reidflow"])["data_lineage"])
    assert lineage["reid.dataset.target.reference"] == "incoming/dukelike"
    assert lineage["reid.dataset.target.content_sha256"] == record["content_sha256"]
