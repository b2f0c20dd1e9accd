"""Triton model repositories: `<name>/config.pbtxt` + `<name>/<version>/model.onnx`.

A version folder appears only complete: it is staged under a hidden name and renamed into
place, so a Triton server polling the repository never loads half a model.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from reid_core.atomic import atomic_output
from reid_core.export.onnx import INPUT_NAME, OUTPUT_NAME


def triton_config(
    name: str, height: int, width: int, embedding_dim: int, max_batch_size: int, gpu: bool = False
) -> str:
    """config.pbtxt for NVIDIA's Triton image, ONNX Runtime backend, dynamic batching."""
    preferred = sorted({s for s in (8, 16, 32, max_batch_size) if s <= max_batch_size})
    return f"""name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
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
dynamic_batching {{
  preferred_batch_size: [ {", ".join(map(str, preferred))} ]
  max_queue_delay_microseconds: 2000
}}
instance_group [
  {{
    count: 1
    kind: {"KIND_GPU" if gpu else "KIND_CPU"}
  }}
]
version_policy: {{ latest: {{ num_versions: 1 }} }}
"""


def publish_version(
    repository: str | Path,
    name: str,
    version: int,
    onnx_path: str | Path,
    config_text: str,
    keep: int = 3,
) -> Path:
    """Place `onnx_path` as version `version` of model `name`; keep the newest `keep` versions."""
    if version < 1:
        raise ValueError(f"Triton versions start at 1, got {version}")
    model_dir = Path(repository) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    with atomic_output(model_dir / "config.pbtxt") as tmp:
        tmp.write_text(config_text)
    final = model_dir / str(version)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=model_dir))
    try:
        shutil.copyfile(onnx_path, staging / "model.onnx")
        os.chmod(staging, 0o755)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    versions = sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
    for old in versions[:-keep]:
        shutil.rmtree(model_dir / str(old), ignore_errors=True)
    return final
