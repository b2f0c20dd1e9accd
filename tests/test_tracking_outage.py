"""A tracking server that goes away mid-training: the stage fails fast with one clear message,
keeps its training state, and a re-run resumes training and logging into the same MLflow run.

The server is a real `mlflow server` subprocess (SQLite store, local artifacts) on a fixed
loopback port, stopped by its PID mid-training and started again on the same port and store.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
import pytest
from conftest import VENV_BIN, stop_process

from reid_core.config import ReidConfig
from reid_core.engine.training_state import load_state
from reid_core.tracking.resume import RESUMED_TAG, RUN_FILE, log_step_metrics
from reid_core.tracking.retries import apply_retry_env, http_retry_env
from reid_core.tracking.runs import stage_run

pytestmark = pytest.mark.integration

RUN_KEY = "outage-test"
# small retry settings, so the outage is noticed within seconds (MLflow's own: minutes)
RETRY = ["--set", "tracking.connect_attempts=2", "--set", "tracking.connect_backoff_s=0.2"]
# still training when the server goes; the re-run trains only the rest
EPOCHS = 75  # 2 iterations an epoch
CHECKPOINT_EVERY = 50  # iterations: the server goes soon after the first saved state


def _start_server(
    start_process: Callable[..., subprocess.Popen], env: dict[str, str], root: Path, port: int
) -> subprocess.Popen:
    """`mlflow server` on 127.0.0.1:`port` over root's SQLite db and artifact folder."""
    cmd = [
        str(VENV_BIN / "mlflow"), "server",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", (root / "artifacts").as_uri(),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    log = root / f"server-{time.monotonic_ns()}.log"
    proc = start_process(cmd, log, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as reply:
                if reply.status == 200:
                    return proc
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    pytest.fail(f"mlflow server not healthy after 60 s:\n{log.read_text()}")


def _last_step(client: mlflow.MlflowClient, run_id: str) -> int:
    """The last step of the run's loss_ce history on the server (0: none yet)."""
    return max((m.step for m in client.get_metric_history(run_id, "loss_ce")), default=0)


def test_the_retry_policy_maps_onto_mlflows_http_retries_unless_the_user_set_them(monkeypatch):
    names = (*http_retry_env(1, 0), "REID_MLFLOW_HTTP_ENV")
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if k not in names})
    assert http_retry_env(6, 1.0) == {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "5",  # 6 tries in all
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",  # waits 0, 2, 4, 8, 16 s
        "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "1.0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
    }
    assert http_retry_env(50, 1000)["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "10"  # MLflow's cap
    assert http_retry_env(50, 1000)["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == "120"

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")  # the user's
    config = ReidConfig.model_validate({"tracking": {"connect_attempts": 3}})
    apply_retry_env(config)
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"
    # a later config (or a child process) replaces what reidflow set, not what the user set
    apply_retry_env(ReidConfig.model_validate({"tracking": {"connect_attempts": 4}}))
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "3"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"


@pytest.fixture
def local_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ReidConfig]:
    """A config whose runs go to a SQLite store under tmp_path; MLflow's globals and the
    variables it sets are put back afterwards."""
    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved = {name: os.environ.pop(name, None) for name in names}
    monkeypatch.setenv("REID_PIPELINE_RUN_ID", "store-test")
    yield ReidConfig.model_validate({"tracking": {"workspace": str(tmp_path / "mlflow")}})
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
    for name, value in saved.items():
        os.environ.pop(name, None)
        if value is not None:
            os.environ[name] = value


def test_a_rerun_reopens_the_recorded_run_and_logs_each_step_once(local_store, tmp_path):
    resume = tmp_path / "state" / "train-0123"
    with pytest.raises(RuntimeError), stage_run("train", local_store, resume) as run:
        for step in range(1, 6):
            log_step_metrics({"loss_ce": float(step)}, step)
        raise RuntimeError("killed after step 5")
    run_id = run.info.run_id
    assert json.loads((resume / RUN_FILE).read_text())["run_id"] == run_id
    client = mlflow.MlflowClient()
    assert client.get_run(run_id).info.status == "FAILED"

    with stage_run("train", local_store, resume) as again:  # resumed from a state at step 2
        for step in range(3, 9):
            log_step_metrics({"loss_ce": step + 100.0}, step)
    assert again.info.run_id == run_id
    finished = client.get_run(run_id)
    assert finished.info.status == "FINISHED"
    assert finished.data.tags[RESUMED_TAG] == "1"
    history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "loss_ce"))
    # steps 3-5 were in the run already: kept once, as first logged
    assert history == [(s, float(s)) for s in range(1, 6)] + [(s, s + 100.0) for s in (6, 7, 8)]


def test_a_recorded_run_the_store_lacks_gives_a_new_run_and_says_so(local_store, tmp_path, capsys):
    resume = tmp_path / "state" / "train-4567"
    resume.mkdir(parents=True)
    (resume / RUN_FILE).write_text(json.dumps({"run_id": "0" * 32}))
    with stage_run("train", local_store, resume) as run:
        pass
    assert run.info.run_id != "0" * 32
    assert json.loads((resume / RUN_FILE).read_text())["run_id"] == run.info.run_id
    err = capsys.readouterr().err
    assert f"not resuming MLflow run {'0' * 32} (it is not in the tracking store" in err, err
    assert RESUMED_TAG not in mlflow.MlflowClient().get_run(run.info.run_id).data.tags


def test_a_lost_server_fails_the_stage_clearly_and_a_rerun_resumes_the_same_run(
    tmp_path, free_port, start_process, venv_env, tiny_config
):
    url = f"http://127.0.0.1:{free_port}"
    env = venv_env(MLFLOW_TRACKING_URI=url, REID_PIPELINE_RUN_ID=RUN_KEY, OMP_NUM_THREADS="1")
    server_env = venv_env()
    server = _start_server(start_process, server_env, tmp_path, free_port)
    work = tmp_path / "work"
    work.mkdir()
    reid = str(VENV_BIN / "reid")
    config = ["--config", str(tiny_config), *RETRY]
    for args in (
        ["data", "synth", "ds"],
        ["preprocess", "--dataset", "ds", "--manifest", "m.parquet", "--report", "r.json"],
    ):
        subprocess.run([reid, *args, *config], cwd=work, env=env, check=True, capture_output=True)
    train = [reid, "train", "--dataset", "ds", "--manifest", "m.parquet", "--checkpoint",
             "teacher", "--metrics", "t.json", *config, "--set", "runtime.state_dir=state",
             "--set", f"train.solver.epochs={EPOCHS}",
             "--set", f"train.solver.checkpoint_every={CHECKPOINT_EVERY}"]  # fmt: skip

    # 1. The server goes away a few logged steps after the first saved training state, so
    #    the re-run, resuming from that state, repeats steps the run already has.
    log = tmp_path / "train-1.log"
    first = start_process(train, log, env=env, cwd=work)
    client = mlflow.MlflowClient(tracking_uri=url)
    deadline = time.monotonic() + 180
    while not list((work / "state").glob("train-*/last.pt")):
        assert first.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    (state,) = (work / "state").glob("train-*")
    recorded = json.loads((state / RUN_FILE).read_text())["run_id"]
    saved = load_state(state)["iter"]
    while _last_step(client, recorded) < saved + 5:
        assert first.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    stopping = time.monotonic()
    stop_process(server)
    try:
        first.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"train still running 60 s after the server stopped:\n{log.read_text()}")
    waited = time.monotonic() - stopping
    output = log.read_text()
    assert first.returncode == 1, output
    found = re.search(r"error: (.*)", output)  # after the progress bar's last \r
    assert found, output
    message = found.group(1)
    assert f"MLflow tracking server {url} became unreachable during the train stage" in message
    assert f"training state in {Path('state') / state.name}" in message, message
    assert recorded in message and "re-running the stage" in message, message
    assert "Traceback" not in output, output
    assert (state / "last.pt").is_file() and (state / RUN_FILE).is_file()
    assert not (work / "teacher").exists()

    # 2. The server is back on the same port and store: the re-run resumes the same run.
    _start_server(start_process, server_env, tmp_path, free_port)
    logged, saved = _last_step(client, recorded), load_state(state)["iter"]
    assert logged > saved, "the server went before any step past the saved state was logged"
    second = subprocess.run(train, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    resumed = re.search(r"resuming from iteration (\d+) of (\d+)", second.stdout)
    assert resumed, second.stdout
    start_iter, max_iter = map(int, resumed.groups())
    assert 0 < start_iter < max_iter
    assert f"resuming MLflow run {recorded}" in second.stdout
    assert not state.exists()  # complete: its state folder is gone

    experiment = client.get_experiment_by_name(ReidConfig().tracking.experiment)
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`reid.pipeline_run_id` = '{RUN_KEY}' and tags.`reid.stage` = 'train'",
    )
    assert [r.info.run_id for r in runs] == [recorded]
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["reid.resumed"] == "1"
    for key in ("loss_ce", "lr"):
        steps = sorted(m.step for m in client.get_metric_history(recorded, key))
        assert steps == list(range(1, max_iter + 1)), (key, start_iter, steps)
    uploaded = {Path(a.path).name for a in client.list_artifacts(recorded, "checkpoint")}
    assert "model.safetensors" in uploaded, uploaded
    print(
        f"train failed within {waited:.1f} s of the server stop (logged {logged}, saved {saved}); "
        f"resumed at iteration {start_iter} of {max_iter}"
    )
