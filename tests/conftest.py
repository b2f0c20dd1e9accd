"""Shared fixtures: the tiny config, a venv environment, a free loopback port, processes by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
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
