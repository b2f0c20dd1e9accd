"""ONNX export: input `images` (N×3×H×W float32 RGB 0–255), output `features` (N×D), any N.

Normalisation is part of the model, so the graph carries it and no client applies it twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reid_core.modeling.model import ReidModel

INPUT_NAME = "images"
OUTPUT_NAME = "features"


class ServingModel(nn.Module):
    """The eval-mode embedding, optionally L2-normalised: exactly what gets exported."""

    def __init__(self, model: ReidModel, l2_normalize: bool):
        super().__init__()
        self.model = model.eval()
        self.l2_normalize = l2_normalize

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.model(images)
        return F.normalize(features, dim=1) if self.l2_normalize else features


def export_onnx(serving: ServingModel, dest: Path, height: int, width: int, opset: int) -> None:
    """Write a single-file ONNX model with a dynamic batch dimension."""
    example = torch.zeros(2, 3, height, width)
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(
        serving.eval(),
        (example,),
        str(dest),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        opset_version=opset,
        dynamic_shapes={"images": {0: batch}},
        external_data=False,
        dynamo=True,
        verbose=False,
    )


@torch.inference_mode()
def parity_report(
    serving: ServingModel, onnx_path: Path, images: torch.Tensor, batch_sizes: Sequence[int]
) -> dict[str, float]:
    """ONNX Runtime vs PyTorch on real images, for each batch size: worst abs diff and cosine."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    report: dict[str, float] = {}
    worst_diff, worst_cos = 0.0, 1.0
    for size in batch_sizes:
        batch = images[:size].float()
        if len(batch) < size:  # fewer images than the batch size: repeat them
            batch = batch.repeat((size + len(batch) - 1) // len(batch), 1, 1, 1)[:size]
        expected = serving(batch).numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: batch.numpy()})[0]
        if got.shape != expected.shape:
            raise RuntimeError(f"ONNX output shape {got.shape} != PyTorch {expected.shape}")
        diff = float(np.abs(got - expected).max())
        cos = float(
            (
                (got * expected).sum(1)
                / (np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1)).clip(1e-12)
            ).min()
        )
        report[f"max_abs_diff_batch{size}"] = diff
        report[f"min_cosine_batch{size}"] = cos
        worst_diff, worst_cos = max(worst_diff, diff), min(worst_cos, cos)
    report["max_abs_diff"] = worst_diff
    report["min_cosine"] = worst_cos
    return report
