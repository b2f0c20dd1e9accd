"""Shared fixtures: the tiny config, a venv environment, a free loopback port, processes by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # components/ and pipelines/ live at the project root
    sys.path.insert(0, str(ROOT))
# The bin folder of the interpreter running the tests (the project venv): reid, dvc, mlflow.
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def tiny_config() -> Path:
    """configs/tiny.yaml: a pipeline small enough for tests (seconds per stage on a CPU)."""
    return ROOT / "configs" / "tiny.yaml"


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM the process group we started (leader = proc.pid), SIGKILL it after `timeout`."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)
    except ProcessLookupError:
        pass


@pytest.fixture
def start_process() -> Iterator[Callable[..., subprocess.Popen]]:
    """Start `cmd` in its own session, output to `log`; every one is stopped at teardown.

    A session of its own makes the PID a process-group id, so servers that fork workers
    (mlflow → uvicorn) are stopped whole, by that id and nothing else.
    """
    started: list[subprocess.Popen] = []

    def start(
        cmd: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> subprocess.Popen:
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
            )
        started.append(proc)
        return proc

    yield start
    for proc in reversed(started):
        stop_process(proc)


@pytest.fixture(scope="session")
def venv_env() -> Callable[..., dict[str, str]]:
    """Builds a subprocess environment: os.environ with the project venv first on PATH (so
    `reid`, `dvc` and `mlflow` are the project's), no inherited MLFLOW_TRACKING_URI, no
    telemetry, plus the given variables."""

    def make(**extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        env.update(
            PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
            GX_ANALYTICS_ENABLED="false",
            DVC_NO_ANALYTICS="1",
            MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false",
        )
        env.update(extra)
        return env

    return make


@pytest.fixture(scope="session")
def triton_installation():
    """The tritonserver that `make test` installs (`reid serve install`); missing is a failure."""
    from reid_core.config import ReidConfig
    from reid_core.serving.server import Installation, ServerError

    try:
        return Installation(ROOT / ReidConfig().triton.server_dir).check()
    except ServerError as err:
        pytest.fail(f"{err} — the Triton tests need it", pytrace=False)


# dummy credentials for the loopback S3 stand-in; real ones never enter the repository
S3_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "reidflow-test",
    "AWS_SECRET_ACCESS_KEY": "reidflow-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 (standing in for S3) and credentials for it in the
    environment, where boto3, DVC, MLflow and Triton all read them."""
    from moto.server import ThreadedMotoServer

    saved = {key: os.environ.get(key) for key in (*S3_TEST_ENV, "AWS_ENDPOINT_URL")}
    os.environ.update(S3_TEST_ENV)
    os.environ.pop("AWS_ENDPOINT_URL", None)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def s3_bucket(s3_endpoint, request) -> str:
    """A new, empty bucket on the loopback S3 server; returns its name."""
    import re

    from reid_core.serving.s3_repository import s3_client

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    bucket = f"{name}-{os.urandom(4).hex()}"
    s3_client(s3_endpoint).create_bucket(Bucket=bucket)
    return bucket


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
def mlflow_server(tmp_path, free_port, start_process, venv_env, s3_endpoint, s3_bucket) -> str:
    """A real `mlflow server` on 127.0.0.1: SQLite backend store, artifacts proxied to
    s3://<s3_bucket>/mlflow on the loopback S3 server; returns its URL. Stopped by PID."""
    mlflow_bin = str(Path(sys.executable).with_name("mlflow"))
    log = tmp_path / "mlflow-server.log"
    cmd = [
        mlflow_bin,
        "server",
        "--backend-store-uri",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--artifacts-destination",
        f"s3://{s3_bucket}/mlflow",
        "--host",
        "127.0.0.1",
        "--port",
        str(free_port),
        "--workers",
        "1",
    ]
    proc = start_process(cmd, log, env=venv_env(MLFLOW_S3_ENDPOINT_URL=s3_endpoint))
    url = f"http://127.0.0.1:{free_port}"
    _wait_healthy(url, proc, log)
    return url


@pytest.fixture(scope="session")
def reproduced_project(tmp_path_factory, tiny_config, venv_env):
    """A copy of the project after `dvc repro` on the tiny config, as a user has it after
    `make demo`: datasets, manifests, evaluation reports, a registered champion served from
    serving/model_repository. For tests that only read it (or add to the registry)."""
    import yaml

    from tests.support.project import copy_project

    root = tmp_path_factory.mktemp("reproduced")
    project = copy_project(root, yaml.safe_load(tiny_config.read_text()), venv_env())
    project.first_repro = project.run("dvc", "repro", run_id="reproduced-project").stdout
    return project
