"""Stages log to a real MLflow tracking server over HTTP: runs, params, metric history, artifacts.

The server (conftest's `mlflow_server`) runs as a subprocess on loopback with a SQLite backend
and proxies artifacts to S3 (a moto server on loopback), so checkpoints travel through the
server's artifact API into the bucket, as they would on a cluster.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def _reid(*args: str, cwd: Path, env: dict[str, str]) -> None:
    proc = subprocess.run(["reid", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(
            f"reid {' '.join(args)} exited with {proc.returncode}\n"
            f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
        )


def test_stages_log_runs_params_metric_history_and_artifacts_to_the_server(
    mlflow_server, s3_endpoint, s3_bucket, tmp_path, tiny_config, venv_env
):
    import mlflow

    from reid_core.config import load_config

    run_key = "server-test-1"
    env = venv_env(MLFLOW_TRACKING_URI=mlflow_server, REID_PIPELINE_RUN_ID=run_key)
    work = tmp_path / "work"
    work.mkdir()
    config = ["--config", str(tiny_config)]
    _reid("data", "synth", "ds", "--num-ids", "8", "--images-per-id", "6", "--height", "64",
          "--width", "32", *config, cwd=work, env=env)  # fmt: skip
    _reid("preprocess", "--dataset", "ds", "--manifest", "m.parquet", "--report", "report.json",
          *config, cwd=work, env=env)  # fmt: skip
    # Three epochs, so the loss history has several steps even with few training ids.
    _reid("train", "--dataset", "ds", "--manifest", "m.parquet", "--checkpoint", "teacher",
          "--metrics", "teacher.json", *config, "--set", "train.solver.epochs=3",
          cwd=work, env=env)  # fmt: skip

    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name(load_config([tiny_config]).tracking.experiment)
    assert experiment is not None
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`reid.pipeline_run_id` = '{run_key}'"
    )
    parents = [r for r in runs if r.data.tags.get("reid.kind") == "pipeline"]
    assert len(parents) == 1, [r.data.tags for r in runs]
    parent_id = parents[0].info.run_id
    stages = {
        r.data.tags.get("reid.stage"): r for r in runs if r.data.tags.get("reid.kind") == "stage"
    }
    assert set(stages) == {"preprocess", "train"}
    for run in stages.values():
        assert run.data.tags["mlflow.parentRunId"] == parent_id
        assert run.info.status == "FINISHED"

    train = stages["train"]
    expected = load_config([tiny_config], ["train.solver.epochs=3"])
    assert float(train.data.params["train.solver.lr"]) == expected.train.solver.lr
    assert int(train.data.params["train.solver.epochs"]) == 3
    assert train.data.params["train.model.backbone"] == expected.train.model.backbone

    run_id = train.info.run_id
    loss = client.get_metric_history(run_id, "loss_ce")
    steps = sorted(m.step for m in loss)
    assert len(steps) >= 3 and len(set(steps)) == len(steps), steps
    lr = client.get_metric_history(run_id, "lr")
    assert sorted(m.step for m in lr) == steps
    assert all(m.value > 0 for m in lr)

    uploaded = {Path(a.path).name for a in client.list_artifacts(run_id, "checkpoint")}
    assert "model.safetensors" in uploaded, uploaded
    assert train.info.artifact_uri.startswith("mlflow-artifacts:"), train.info.artifact_uri
    from reid_core.serving.s3_repository import s3_client

    stored = s3_client(s3_endpoint).list_objects_v2(Bucket=s3_bucket, Prefix="mlflow/")
    keys = [o["Key"] for o in stored.get("Contents", [])]
    assert any(k.endswith("checkpoint/model.safetensors") for k in keys), keys
