"""Triton model repositories: `<name>/config.pbtxt` + `<name>/<version>/model.onnx`.

Three flavours of the same repository, chosen by `triton.backend`:
- `onnxruntime`: the production config for NVIDIA's Triton image (platform onnxruntime_onnx);
- `tensorrt`: the export's fp16 TensorRT engine (`model.plan`, platform tensorrt_plan), for
  NVIDIA's image on the GPU model the engine was built on;
- `python`: what the bundled CPU tritonserver can load; its python backend runs the same
  model.onnx with ONNX Runtime (`triton_python_model.py`, copied as `<version>/model.py`).

Publishing (`publish_next_version`) goes to a local folder or an S3 prefix
(`repositories.open_repository`); either way config.pbtxt names the served versions and is
rewritten only once the new version is complete, so a polling Triton never loads half a model.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from reid_core.config import MODEL_NAME_PATTERN, TritonConfig
from reid_core.export.onnx import INPUT_NAME, OUTPUT_NAME
from reid_core.serving.repositories import open_repository

PYTHON_MODEL = Path(__file__).with_name("triton_python_model.py")
# the file each flavour serves, as the export stage names it and Triton's default expects it
MODEL_FILES = {"onnxruntime": "model.onnx", "tensorrt": "model.plan", "python": "model.onnx"}
_RUNTIMES = {
    "onnxruntime": 'platform: "onnxruntime_onnx"',
    "tensorrt": 'platform: "tensorrt_plan"',
    "python": 'backend: "python"',
}


def triton_config(
    name: str,
    height: int,
    width: int,
    embedding_dim: int,
    config: TritonConfig,
    versions: Sequence[int] | None = None,
) -> str:
    """config.pbtxt for `config.backend`, with batching and instances; it serves `versions`
    (what publishing writes: the config is the switch), or the newest `serve_versions`."""
    if not re.fullmatch(MODEL_NAME_PATTERN, name):
        raise ValueError(f"{name!r} is not a model name Triton can serve ({MODEL_NAME_PATTERN})")
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
    if versions is None:
        policy = f"{{ latest: {{ num_versions: {config.serve_versions} }} }}"
    else:
        policy = f"{{ specific: {{ versions: [ {', '.join(map(str, sorted(versions)))} ] }} }}"
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
version_policy: {policy}
"""


def version_files(model_file: str | Path, backend: str) -> dict[str, Path]:
    """What a version folder of the `backend` flavour holds: name there → local file."""
    files = {MODEL_FILES[backend]: Path(model_file)}
    if backend == "python":
        files["model.py"] = PYTHON_MODEL
    return files


def publish_next_version(
    config: TritonConfig, name: str, model_file: str | Path, height: int, width: int, dim: int
) -> tuple[int, str]:
    """Publish `model_file` as the repository's next version of `name` and serve it (with the
    newest `serve_versions - 1` before it): (version number, where it lives)."""
    with publication(config, name, model_file, height, width, dim) as published:
        return published


@contextmanager
def publication(
    config: TritonConfig, name: str, model_file: str | Path, height: int, width: int, dim: int
) -> Iterator[tuple[int, str]]:
    """`publish_next_version` as the first step of a change, yielding (version, where).

    The rest of the change (moving the registry's aliases, recording the decision) goes in
    the `with` block: when it fails, the publish is undone, so Triton serves what it served
    before and never a version the registry did not make champion.
    """
    repository = open_repository(config.repository)
    config_before = repository.read_config(name)
    version = max(repository.versions(name), default=0) + 1
    served = sorted({*repository.served(name), version})[-config.serve_versions :]
    text = triton_config(name, height, width, dim, config, served)
    where = repository.publish(
        name, version, version_files(model_file, config.backend), text, served,
        config.keep_versions,
    )  # fmt: skip
    try:
        yield version, where
    except BaseException:
        repository.unpublish(name, version, config_before)
        raise
