"""Stages log to a real MLflow tracking server over HTTP: runs, params, metric history, artifacts.

The server runs as a subprocess on loopback with a SQLite backend and proxied artifact storage,
so checkpoints travel through the server's artifact API, as they would on a cluster.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

HEALTH_TIMEOUT_S = 60.0


def _log_tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited with {proc.returncode}:\n{_log_tail(log)}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    pytest.fail(f"mlflow server not healthy after {HEALTH_TIMEOUT_S:.0f} s:\n{_log_tail(log)}")


@pytest.fixture
def mlflow_server(tmp_path, free_port, start_process, venv_env) -> str:
    """A real `mlflow server` on 127.0.0.1; returns its URL. Stopped by PID at teardown."""
    mlflow_bin = str(Path(sys.executable).with_name("mlflow"))
    log = tmp_path / "mlflow-server.log"
    cmd = [
        mlflow_bin,
        "server",
        "--backend-store-uri",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--artifacts-destination",
        str(tmp_path / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(free_port),
        "--workers",
        "1",
    ]
    proc = start_process(cmd, log, env=venv_env())
    url = f"http://127.0.0.1:{free_port}"
    _wait_healthy(url, proc, log)
    return url


def _reid(*args: str, cwd: Path, env: dict[str, str]) -> None:
    proc = subprocess.run(["reid", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(
            f"reid {' '.join(args)} exited with {proc.returncode}\n"
            f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
        )


def test_stages_log_runs_params_metric_history_and_artifacts_to_the_server(
    mlflow_server, tmp_path, tiny_config, venv_env
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
    assert any((tmp_path / "artifacts").rglob("model.safetensors")), "not stored by the server"
