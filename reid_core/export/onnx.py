"""ONNX export: input `images` (N×3×H×W float32 RGB 0–255), output `features` (N×D), any N.

Normalisation is part of the model, so the graph carries it and no client applies it twice.
With `fp16`, the backbone (nearly all weights and arithmetic) runs in half precision inside
the graph while the interface stays float32: pixels are normalised in fp32 and cast after,
and pooling and head run in fp32, since GeM's x^p overflows fp16 (65504) once activations
pass ~40 at p=3, and they hold a negligible share of the weights and compute. ONNX Runtime's
x86 CPU provider, lacking fp16 convolutions, casts such a graph's weights up and runs fp32
kernels: its gate checks the fp16 rounding of weights and of the backbone's input and output,
while TensorRT's gate (GPU) checks fp16 arithmetic too.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reid_core.modeling.model import ReidModel

INPUT_NAME = "images"
OUTPUT_NAME = "features"
_SOURCE_TRACE = "pkg.torch.onnx.stack_trace"  # node metadata naming source files


class HalfPrecision(nn.Module):
    """Runs `module` with fp16 weights and arithmetic between float32 edges."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.half()).float()


class ServingModel(nn.Module):
    """The eval-mode embedding, optionally L2-normalised: exactly what gets exported.

    With `fp16`, a copy of the model whose backbone runs in half precision (the caller's
    model is left as it is, so it can serve as the fp32 reference of the parity gate).
    """

    def __init__(self, model: ReidModel, l2_normalize: bool, fp16: bool = False):
        super().__init__()
        if fp16:
            model = copy.deepcopy(model)
            model.backbone = HalfPrecision(model.backbone)
        self.model = model.eval()
        self.l2_normalize = l2_normalize
        self.fp16 = fp16

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.model(images)
        return F.normalize(features, dim=1) if self.l2_normalize else features


def export_onnx(serving: ServingModel, dest: Path, height: int, width: int, opset: int) -> None:
    """Write a single-file ONNX model with a dynamic batch dimension."""
    example = torch.zeros(2, 3, height, width)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(
        serving.eval(),
        (example,),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        opset_version=opset,
        dynamic_shapes={"images": {0: batch}},
        dynamo=True,
        verbose=False,
    )
    for node in program.model.graph.all_nodes():
        # the exporter records the Python stack of each op, with this checkout's absolute
        # paths: the same weights would give a different file in every folder
        node.metadata_props.pop(_SOURCE_TRACE, None)
    program.save(str(dest), external_data=False)


def parity_batches(images: torch.Tensor, batch_sizes: Sequence[int]) -> list[torch.Tensor]:
    """One float batch of each size from `images`, repeated when there are fewer of them."""
    batches = []
    for size in batch_sizes:
        batch = images[:size].float()
        if len(batch) < size:
            batch = batch.repeat((size + len(batch) - 1) // len(batch), 1, 1, 1)[:size]
        batches.append(batch)
    return batches


def compare(got: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    """(max abs diff, min row cosine) of two N×D feature matrices of the same shape."""
    if got.shape != expected.shape:
        raise RuntimeError(f"output shape {got.shape} != PyTorch {expected.shape}")
    got, expected = got.astype(np.float64), expected.astype(np.float64)
    norms = np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1)
    cosine = (got * expected).sum(1) / norms.clip(1e-12)
    return float(np.abs(got - expected).max()), float(cosine.min())


@torch.inference_mode()
def parity_report(
    reference: nn.Module,
    onnx_path: Path,
    images: torch.Tensor,
    batch_sizes: Sequence[int],
) -> dict[str, float]:
    """ONNX Runtime (CPU) vs the PyTorch `reference` (the fp32 serving model, also for an
    fp16 graph) on real images, per batch size and overall: worst abs diff and cosine."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return parity_figures(
        lambda batch: session.run([OUTPUT_NAME], {INPUT_NAME: batch.numpy()})[0],
        reference,
        parity_batches(images, batch_sizes),
    )


@torch.inference_mode()
def parity_figures(
    run: Callable[[torch.Tensor], np.ndarray], reference: nn.Module, batches: list[torch.Tensor]
) -> dict[str, float]:
    """Per-batch and overall figures of `run(batch) -> N×D array` against `reference`."""
    if not batches:
        raise ValueError("a parity check needs at least one batch")
    report: dict[str, float] = {}
    worst_diff, worst_cos = 0.0, 1.0
    for batch in batches:
        diff, cos = compare(np.asarray(run(batch)), reference.eval()(batch).numpy())
        report[f"max_abs_diff_batch{len(batch)}"] = diff
        report[f"min_cosine_batch{len(batch)}"] = cos
        worst_diff, worst_cos = max(worst_diff, diff), min(worst_cos, cos)
    report["max_abs_diff"] = worst_diff
    report["min_cosine"] = worst_cos
    return report


def latency_ms(onnx_path: Path, images: torch.Tensor, repeats: int = 30) -> float:
    """Median ONNX Runtime CPU latency of one batch of `images`, in ms (the promotion policy's
    latency figure; after 3 warm-up runs)."""
    import time

    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feed = {INPUT_NAME: images.float().numpy()}
    times = []
    for i in range(repeats + 3):
        start = time.perf_counter()
        session.run([OUTPUT_NAME], feed)
        if i >= 3:
            times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def onnx_interface(onnx_path: Path) -> tuple[int, int, int]:
    """(height, width, embedding dim) of an exported model, read from its graph."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        graph = onnx.load(str(onnx_path), load_external_data=False).graph
    except (DecodeError, OSError, ValueError) as err:
        raise OnnxFileError(f"{onnx_path}: not a readable ONNX model ({err})") from None
    image = [i.type.tensor_type.shape.dim for i in graph.input if i.name == INPUT_NAME]
    features = [o.type.tensor_type.shape.dim for o in graph.output if o.name == OUTPUT_NAME]
    if len(image) != 1 or len(image[0]) != 4 or len(features) != 1 or len(features[0]) != 2:
        raise OnnxFileError(
            f"{onnx_path}: not a model reid export writes (an input {INPUT_NAME!r} N×3×H×W and "
            f"an output {OUTPUT_NAME!r} N×D)"
        )
    _, _, height, width = (d.dim_value for d in image[0])
    return height, width, features[0][1].dim_value


class OnnxFileError(ValueError):
    """An ONNX file that is unreadable or not shaped as `reid export` writes it."""
