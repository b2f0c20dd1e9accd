"""What `reid export` measured of the ONNX model it wrote (parity.json next to model.onnx)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from reid_core.artifacts.json_artifact import JsonArtifact


@dataclass(frozen=True)
class ExportRecord(JsonArtifact):
    """The exported graph's interface and its parity with the fp32 PyTorch model."""

    FILE: ClassVar[str] = "parity.json"
    MODEL_FILE: ClassVar[str] = "model.onnx"
    WRITTEN_BY: ClassVar[str] = "reid export"
    VERSION: ClassVar[int] = 2  # 2: no latency or run id (run facts stay in MLflow)

    height: int
    width: int
    embedding_dim: int
    l2_normalized: bool
    fp16: bool
    opset: int
    # the gate: worst figures over every parity batch, the tolerances they met
    parity_passed: bool
    max_abs_diff: float
    min_cosine: float
    tolerance_max_abs_diff: float
    tolerance_min_cosine: float
    parity_batch_sizes: list[int]
    onnx_bytes: int
    tensorrt: str  # "built: model.plan", "skipped: <why>" or "disabled"
    # per batch size (`max_abs_diff_batch7`, ...) and the TensorRT engine's (`tensorrt_...`)
    figures: dict[str, float] = field(default_factory=dict)
