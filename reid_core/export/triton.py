"""Triton model repositories: `<name>/config.pbtxt` + `<name>/<version>/model.onnx`.

Three flavours of the same repository, chosen by `triton.backend`:
- `onnxruntime`: the production config for NVIDIA's Triton image (platform onnxruntime_onnx);
- `tensorrt`: the export's fp16 TensorRT engine (`model.plan`, platform tensorrt_plan), for
  NVIDIA's image on the GPU model the engine was built on;
- `python`: what the bundled CPU tritonserver can load; its python backend runs the same
  model.onnx with ONNX Runtime (`triton_python_model.py`, copied as `<version>/model.py`).

A version folder appears only complete: it is staged under a hidden name and renamed into
place, so a Triton server polling the repository never loads half a model.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from reid_core.atomic import atomic_output
from reid_core.config import TritonConfig
from reid_core.export.onnx import INPUT_NAME, OUTPUT_NAME

PYTHON_MODEL = Path(__file__).with_name("triton_python_model.py")
# the file each flavour serves, as the export stage names it and Triton's default expects it
MODEL_FILES = {"onnxruntime": "model.onnx", "tensorrt": "model.plan", "python": "model.onnx"}
_RUNTIMES = {
    "onnxruntime": 'platform: "onnxruntime_onnx"',
    "tensorrt": 'platform: "tensorrt_plan"',
    "python": 'backend: "python"',
}


def triton_config(
    name: str, height: int, width: int, embedding_dim: int, config: TritonConfig
) -> str:
    """config.pbtxt for `config.backend`, with batching, instances and version policy."""
    runtime = _RUNTIMES[config.backend]
    batching = ""
    if config.dynamic_batching:
        preferred = ", ".join(map(str, sorted(set(config.preferred_batch_sizes))))
        batching = f"""dynamic_batching {{
  preferred_batch_size: [ {preferred} ]
  max_queue_delay_microseconds: {config.max_queue_delay_us}
}}
"""
    # the python backend runs ONNX Runtime on the CPU whatever the instance kind
    gpu = config.instance_kind == "gpu" and config.backend != "python"
    kind = "KIND_GPU" if gpu else "KIND_CPU"
    return f"""name: "{name}"
{runtime}
max_batch_size: {config.max_batch_size}
input [
  {{
    name: "{INPUT_NAME}"
    data_type: TYPE_FP32
    dims: [ 3, {height}, {width} ]
  }}
]
output [
  {{
    name: "{OUTPUT_NAME}"
    data_type: TYPE_FP32
    dims: [ {embedding_dim} ]
  }}
]
{batching}instance_group [
  {{
    count: {config.instance_count}
    kind: {kind}
  }}
]
version_policy: {{ latest: {{ num_versions: {config.serve_versions} }} }}
"""


def published_versions(repository: str | Path, name: str) -> list[int]:
    """Version numbers present for model `name`, ascending (hidden staging folders excluded)."""
    model_dir = Path(repository) / name
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def publish_version(
    repository: str | Path,
    name: str,
    version: int,
    model_file: str | Path,
    config_text: str,
    keep: int = 3,
    backend: str = "onnxruntime",
) -> Path:
    """Place `model_file` (model.onnx, or model.plan for `tensorrt`) as version `version` of
    model `name`; keep the newest `keep` versions.

    The config is rewritten only when its text changes: Triton reloads a model whose config
    changed, which would be a needless reload of every served version.
    """
    if version < 1:
        raise ValueError(f"Triton versions start at 1, got {version}")
    model_dir = Path(repository) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    config_path = model_dir / "config.pbtxt"
    if not config_path.is_file() or config_path.read_text() != config_text:
        with atomic_output(config_path) as tmp:
            tmp.write_text(config_text)
    final = model_dir / str(version)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=model_dir))
    try:
        shutil.copyfile(model_file, staging / MODEL_FILES[backend])
        if backend == "python":
            shutil.copyfile(PYTHON_MODEL, staging / "model.py")
        os.chmod(staging, 0o755)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for old in published_versions(repository, name)[:-keep]:
        shutil.rmtree(model_dir / str(old), ignore_errors=True)
    return final


@contextlib.contextmanager
def repository_lock(repository: str | Path, name: str, timeout: float = 600.0) -> Iterator[None]:
    """Hold the exclusive lock of model `name` in a local repository: promotions and rollbacks
    decide, publish and move aliases inside it, so two racing ones are serialised.

    The lock file sits beside the repository, where Triton does not look for models.
    """
    repository = Path(repository).resolve()
    repository.parent.mkdir(parents=True, exist_ok=True)
    lock_path = repository.with_name(f".{repository.name}.{name}.lock")
    deadline = time.monotonic() + timeout
    with open(lock_path, "a") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{lock_path} held for over {timeout:.0f} s") from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def publish_next_version(
    config: TritonConfig, name: str, model_file: str | Path, height: int, width: int, dim: int
) -> tuple[int, Path]:
    """Publish `model_file` as the repository's next version of `name` (Triton serves the
    newest): (version number, its folder)."""
    version = (published_versions(config.repository, name) or [0])[-1] + 1
    text = triton_config(name, height, width, dim, config)
    folder = publish_version(
        config.repository, name, version, model_file, text, config.keep_versions, config.backend
    )
    return version, folder
