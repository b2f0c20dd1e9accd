"""The bundled CPU tritonserver: install it, run it on 127.0.0.1 over a repository, stop it.

The `nvidia-pytriton` wheel carries a real tritonserver binary with the python backend only.
The backend's stub process embeds libpython and imports numpy and onnxruntime from whatever
interpreter comes first on its PATH, so the installation holds a small venv of its own with
numpy<2 (with numpy 2 the stub receives all-zero tensors) and the main venv's onnxruntime.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from reid_core.atomic import atomic_output

if TYPE_CHECKING:
    from reid_core.config import TritonConfig

PYTRITON = "nvidia-pytriton==0.7.0"
INSTALL_RECORD = "install.json"
# the wheel's layout is kept: the binary finds its bundled libraries at $ORIGIN/../../../
SERVER_FOLDER = Path("pytriton", "tritonserver")
WHEEL_LIBS = "nvidia_pytriton.libs/"
# how long a stopping server waits for in-flight requests and open connections
EXIT_TIMEOUT_S = 10
# errors every start logs on a machine without a GPU
_CPU_NOISE = ("CudaDriverHelper", "NVML", "pinned memory", "CUDA")


class ServerError(RuntimeError):
    """tritonserver is missing, failed to start, or did not become ready in time."""


class WheelError(ValueError):
    """The wheel given to install is not a readable nvidia-pytriton wheel."""


@dataclass(frozen=True)
class Installation:
    """Paths of an installed tritonserver (see `install`)."""

    root: Path

    @property
    def server(self) -> Path:
        return self.root / SERVER_FOLDER

    @property
    def binary(self) -> Path:
        return self.server / "bin" / "tritonserver"

    @property
    def backends(self) -> Path:
        return self.server / "backends"

    @property
    def stub_env(self) -> Path:
        return self.root / "stub-env"

    def record(self) -> dict:
        return json.loads((self.root / INSTALL_RECORD).read_text())

    def check(self) -> Installation:
        """Raise ServerError, saying how to install, unless the installation is complete."""
        if not (self.root / INSTALL_RECORD).is_file() or not self.binary.is_file():
            raise ServerError(
                f"no tritonserver installed under {self.root}: run `reid serve install` "
                "(or `make triton`)"
            )
        return self

    def environment(self) -> dict[str, str]:
        """The server's environment: the stub venv first on PATH, libpython findable."""
        env = dict(os.environ)
        env["PATH"] = f"{self.stub_env / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        libdir = self.record()["libpython_dir"]
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (libdir, env.get("LD_LIBRARY_PATH", "")) if p
        )
        for leak in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
            env.pop(leak, None)
        return env


def _libpython_dir() -> str:
    name = f"libpython{sys.version_info.major}.{sys.version_info.minor}.so.1.0"
    for folder in (sysconfig.get_config_var("LIBDIR"), "/usr/lib/x86_64-linux-gnu", "/usr/lib"):
        if folder and (Path(folder) / name).is_file():
            return str(folder)
    raise ServerError(
        f"{name} not found: the python backend's stub needs a shared-library Python "
        "(built with --enable-shared)"
    )


def _pip(*args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise ServerError(f"pip {' '.join(args[:2])} failed:\n{result.stderr[-2000:]}")


def install(root: str | Path, wheel: str | Path | None = None, force: bool = False) -> Installation:
    """Install tritonserver and its stub environment under `root` (idempotent, atomic).

    `wheel` is a downloaded nvidia-pytriton wheel; without one it is fetched from the package
    index. Nothing is visible at `root` until the whole installation is complete.
    """
    import onnxruntime

    installation = Installation(Path(root))
    if not force:
        try:
            return installation.check()
        except ServerError:
            pass
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    libdir = _libpython_dir()
    with tempfile.TemporaryDirectory() as download:
        if wheel is None:
            _pip("download", "--no-deps", "--quiet", "-d", download, PYTRITON)
            wheel = next(Path(download).glob("nvidia_pytriton-*.whl"))
        with _open_wheel(Path(wheel)) as archive, atomic_output(root, directory=True) as tmp:
            server = Installation(tmp).server
            members = [
                m
                for m in archive.namelist()
                if m.startswith((f"{SERVER_FOLDER.as_posix()}/", WHEEL_LIBS))
            ]
            archive.extractall(tmp, members)
            stub = server / "python_backend_stubs" / version / "triton_python_backend_stub"
            if not stub.is_file():
                raise WheelError(f"{wheel}: has no python backend stub for Python {version}")
            python_backend = server / "backends" / "python"
            shutil.copy2(stub, python_backend)
            for executable in (server / "bin" / "tritonserver", python_backend / stub.name):
                executable.chmod(0o755)
            _make_stub_env(tmp / "stub-env", f"onnxruntime=={onnxruntime.__version__}")
            record = {
                "package": PYTRITON,
                "python": version,
                "libpython_dir": libdir,
                "onnxruntime": onnxruntime.__version__,
            }
            (tmp / INSTALL_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return installation.check()


def _open_wheel(wheel: Path) -> zipfile.ZipFile:
    try:
        archive = zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as err:
        raise WheelError(f"{wheel}: not a readable wheel ({err})") from None
    if not any(name.startswith(f"{SERVER_FOLDER.as_posix()}/") for name in archive.namelist()):
        archive.close()
        raise WheelError(f"{wheel}: not an nvidia-pytriton wheel (it has no {SERVER_FOLDER})")
    return archive


def _make_stub_env(path: Path, onnxruntime: str) -> None:
    base = getattr(sys, "_base_executable", sys.executable)
    result = subprocess.run([base, "-m", "venv", str(path)], capture_output=True, text=True)
    if result.returncode != 0:
        raise ServerError(f"cannot create the stub venv: {result.stderr[-2000:]}")
    pip = [str(path / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    result = subprocess.run([*pip, "numpy<2", onnxruntime], capture_output=True, text=True)
    if result.returncode != 0:
        raise ServerError(f"cannot install the stub's packages: {result.stderr[-2000:]}")


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports that nothing listens on at 127.0.0.1 right now."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class TritonServer:
    """A tritonserver process on 127.0.0.1, polling `repository` (a folder or `s3://…`) for
    new model versions.

    Use as a context manager, or `start()` / `stop()`. Logs go to `log` (a file) when given,
    otherwise to this process's stdout/stderr.
    """

    @classmethod
    def from_config(
        cls,
        triton: TritonConfig,
        repository: str | Path | None = None,
        log: str | Path | None = None,
    ) -> TritonServer:
        """The server the `triton` section describes, over `repository` (default: its own)."""
        return cls(
            repository or triton.repository,
            Installation(triton.server_dir),
            triton.http_port,
            triton.grpc_port,
            triton.metrics_port,
            triton.poll_seconds,
            log,
        )

    def __init__(
        self,
        repository: str | Path,
        installation: Installation,
        http_port: int = 8000,
        grpc_port: int = 8001,
        metrics_port: int = 8002,
        poll_seconds: int = 2,
        log: str | Path | None = None,
    ):
        # an S3 location (Triton's spelling, credentials from the environment) or a folder
        self.remote = str(repository).startswith("s3://")
        self.repository = str(repository) if self.remote else str(Path(repository).resolve())
        self.installation = installation.check()
        self.http_port, self.grpc_port, self.metrics_port = http_port, grpc_port, metrics_port
        self.poll_seconds = poll_seconds
        self.log = Path(log) if log else None
        self.process: subprocess.Popen | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def command(self) -> list[str]:
        return [
            str(self.installation.binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={self.installation.backends}",
            "--model-control-mode=poll",
            f"--repository-poll-secs={self.poll_seconds}",
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={self.metrics_port}",
            "--exit-on-error=true",
            f"--exit-timeout-secs={EXIT_TIMEOUT_S}",
        ]

    def start(self, timeout: float = 60.0) -> TritonServer:
        """Start the server and wait until it answers ready (every model loaded)."""
        if not self.remote and not Path(self.repository).is_dir():
            raise ServerError(f"model repository {self.repository} is not a folder")
        # another server on these ports would answer the readiness check in this one's place
        for what, port in (("http", self.http_port), ("grpc", self.grpc_port),
                           ("metrics", self.metrics_port)):  # fmt: skip
            if _taken("127.0.0.1", port):
                raise ServerError(
                    f"port {port} on 127.0.0.1 ({what}) is taken, by another tritonserver or any "
                    f"other program: stop it or set triton.{what}_port"
                )
        if self.log:
            self.log.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = open(self.log, "ab")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            self.command(),
            env=self.installation.environment(),
            stdout=self._log_file,
            stderr=subprocess.STDOUT if self._log_file else None,
            start_new_session=True,  # stop() can take the backend stubs down with it
        )
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def status(self, path: str) -> int:
        """HTTP status of GET `path` on the server (0 when it does not answer)."""
        try:
            with urllib.request.urlopen(f"http://{self.http_url}{path}", timeout=2) as reply:
                return reply.status
        except urllib.error.HTTPError as err:
            return err.code
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return 0

    def _wait(self, path: str, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise ServerError(f"tritonserver exited before {what}{self._log_tail()}")
            if self.status(path) == 200:
                return
            time.sleep(0.2)
        raise ServerError(f"tritonserver: no {what} after {timeout:.0f} s{self._log_tail()}")

    def wait_ready(self, timeout: float = 60.0) -> None:
        self._wait("/v2/health/ready", "readiness", timeout)

    def wait_model_ready(
        self, name: str, version: int | None = None, timeout: float = 60.0
    ) -> None:
        """Wait until `name` (a given version, or any) is loaded and ready."""
        path = f"/v2/models/{name}" + (f"/versions/{version}" if version else "") + "/ready"
        self._wait(path, f"model {name} v{version or '*'} ready", timeout)

    def serve_until_signalled(self) -> None:
        """Block until SIGINT or SIGTERM (then return), or raise if the server dies first."""
        stop = threading.Event()
        previous = {
            sig: signal.signal(sig, lambda *_: stop.set())
            for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            while not stop.wait(0.5):
                if not self.running():
                    raise ServerError(
                        f"tritonserver exited with code {self.process.returncode}{self._log_tail()}"
                    )
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = EXIT_TIMEOUT_S + 10.0) -> int | None:
        """SIGTERM (Triton unloads its models), then SIGKILL to the group after `timeout`."""
        code = None
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(self.process.pid, signal.SIGKILL)
                    self.process.wait()
            code = self.process.returncode
            with contextlib.suppress(ProcessLookupError):  # stubs left by a killed server
                os.killpg(self.process.pid, signal.SIGKILL)
        if self._log_file:
            self._log_file.close()
            self._log_file = None
        return code

    def _log_tail(self, lines: int = 5) -> str:
        """Triton's error lines (glog `E…`, minus the GPU probes of a CPU machine) and the end."""
        if not self.log or not self.log.is_file():
            return ""
        text = self.log.read_text(errors="replace").splitlines()
        errors = [
            line[:1000]
            for line in text
            if line.startswith("E") and not any(noise in line for noise in _CPU_NOISE)
        ]
        return "; server log:\n" + "\n".join(errors + text[-lines:])

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _taken(host: str, port: int) -> bool:
    """Whether something listens on `host:port` already (a bind would fail)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False
