"""Every stage through the `reid` CLI on a tiny synthetic dataset, with a real MLflow store."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[1]
TINY = ROOT / "configs" / "tiny.yaml"


def reid(*args, cwd, env, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "reid_core.cli", *map(str, args), "--config", str(TINY)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"reid {args[0]} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    ws = tmp_path_factory.mktemp("stages")
    env = {
        **os.environ,
        "GX_ANALYTICS_ENABLED": "false",
        "REID_PIPELINE_RUN_ID": "stages-test",
        "MLFLOW_TRACKING_URI": f"sqlite:///{ws / 'mlflow.db'}",
    }
    env.pop("MLFLOW_REGISTRY_URI", None)
    reid("data", "synth", "ds", cwd=ws, env=env)
    reid(
        "preprocess",
        "--dataset",
        "ds",
        "--manifest",
        "m.parquet",
        "--report",
        "r.json",
        cwd=ws,
        env=env,
    )
    reid(
        "train",
        "--dataset",
        "ds",
        "--manifest",
        "m.parquet",
        "--checkpoint",
        "teacher",
        "--metrics",
        "teacher.json",
        cwd=ws,
        env=env,
    )
    reid(
        "distill",
        "--dataset",
        "ds",
        "--manifest",
        "m.parquet",
        "--teacher",
        "teacher",
        "--checkpoint",
        "student",
        "--metrics",
        "student.json",
        cwd=ws,
        env=env,
    )
    reid(
        "evaluate",
        "--dataset",
        "ds",
        "--manifest",
        "m.parquet",
        "--model",
        "student",
        "--metrics",
        "eval.json",
        "--features",
        "f.npz",
        cwd=ws,
        env=env,
    )
    reid(
        "export",
        "--dataset",
        "ds",
        "--manifest",
        "m.parquet",
        "--model",
        "student",
        "--onnx",
        "onnx",
        cwd=ws,
        env=env,
    )
    return ws, env


def test_stages_write_their_declared_outputs(workspace):
    ws, _ = workspace
    metrics = json.loads((ws / "eval.json").read_text())
    for key in ("rank1", "rank5", "mAP", "mINP", "tar_at_far_0.0001", "tar_at_far_0.01"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["eval_set_hash"]
    assert (ws / "teacher" / "model.safetensors").is_file()
    assert (ws / "onnx" / "model.onnx").is_file()
    assert json.loads((ws / "onnx" / "parity.json").read_text())["parity_passed"] is True


def test_stages_are_child_runs_of_one_pipeline_run(workspace):
    import mlflow

    ws, env = workspace
    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs(
        [client.get_experiment_by_name("reidflow").experiment_id],
        filter_string="tags.`reid.pipeline_run_id` = 'stages-test'",
    )
    parents = [r for r in runs if r.data.tags.get("reid.kind") == "pipeline"]
    stages = [r for r in runs if r.data.tags.get("reid.kind") == "stage"]
    assert len(parents) == 1
    assert {r.data.tags["mlflow.parentRunId"] for r in stages} == {parents[0].info.run_id}
    assert {r.data.tags["reid.stage"] for r in stages} == {
        "preprocess",
        "train",
        "distill",
        "evaluate",
        "export",
    }
    train = next(r for r in stages if r.data.tags["reid.stage"] == "train")
    assert train.data.params["train.solver.ids_per_batch"] == "4"
    assert len(client.get_metric_history(train.info.run_id, "loss_ce")) >= 2


def test_promote_registers_then_refuses_an_equal_model(workspace):
    import mlflow

    ws, env = workspace
    common = ("--onnx", "onnx", "--model", "student", "--evaluation", "eval.json")
    repo = ws / "model_repository"
    overrides = ("--set", f"promote.triton_repository={repo}")
    reid("promote", *common, "--decision", "d1.json", *overrides, cwd=ws, env=env)
    reid("promote", *common, "--decision", "d2.json", *overrides, cwd=ws, env=env)
    first = json.loads((ws / "d1.json").read_text())
    second = json.loads((ws / "d2.json").read_text())
    assert first["promoted"] and first["version"] == 1
    assert not second["promoted"] and "does not beat" in second["reasons"][0]
    assert (repo / "reid-student" / "1" / "model.onnx").is_file()
    assert not (repo / "reid-student" / "2").exists()
    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    champion = client.get_model_version_by_alias("reid-student", "champion")
    assert int(champion.version) == 1
    for tag in (
        "reid.git_commit",
        "reid.config_hash",
        "reid.data_fingerprint",
        "reid.eval_set_hash",
    ):
        assert champion.tags[tag]


def test_adapt_runs_a_pseudo_label_round_on_a_second_domain(workspace):
    ws, env = workspace
    reid("data", "synth", "target", "--style", "dusk", "--seed", "1", cwd=ws, env=env)
    reid(
        "preprocess",
        "--dataset",
        "target",
        "--manifest",
        "t.parquet",
        "--report",
        "t.json",
        "--set",
        "data.domain=target",
        cwd=ws,
        env=env,
    )
    reid(
        "adapt",
        "--dataset",
        "target",
        "--manifest",
        "t.parquet",
        "--model",
        "teacher",
        "--checkpoint",
        "adapted",
        "--metrics",
        "adapted.json",
        cwd=ws,
        env=env,
    )
    metrics = json.loads((ws / "adapted.json").read_text())
    assert metrics["rounds_completed"] == 1 and metrics["clusters"] >= 2
    assert 0 <= metrics["pseudo_nmi"] <= 1


def test_impossible_clustering_fails_adapt_without_output(workspace):
    ws, env = workspace
    proc = reid(
        "adapt",
        "--dataset",
        "ds",
        "--manifest",
        "m.parquet",
        "--model",
        "teacher",
        "--checkpoint",
        "bad",
        "--metrics",
        "bad.json",
        "--set",
        "adapt.min_samples=1000",
        cwd=ws,
        env=env,
        check=False,
    )
    assert proc.returncode == 1 and "outlier" in proc.stderr
    assert not (ws / "bad").exists() and not (ws / "bad.json").exists()


def test_a_missing_input_is_named(workspace):
    ws, env = workspace
    proc = reid(
        "evaluate",
        "--dataset",
        "ds",
        "--manifest",
        "m.parquet",
        "--model",
        "nowhere",
        "--metrics",
        "x.json",
        "--features",
        "x.npz",
        cwd=ws,
        env=env,
        check=False,
    )
    assert proc.returncode == 2 and "nowhere" in proc.stderr
