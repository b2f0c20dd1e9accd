"""TensorRT engine from the exported ONNX model (GPU only), and its parity with PyTorch.

The engine keeps the ONNX interface (`images` N×3×H×W float32 RGB 0–255 → `features` N×D
float32) with one optimisation profile over the batch dimension; with `fp16` TensorRT may run
layers in half precision, so its parity gate uses the reduced-precision tolerances. Written
against TensorRT 10's Python API (named I/O tensors, `execute_async_v3`); `tensorrt` is
imported only here and only when used, so the package works without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from reid_core.export.onnx import INPUT_NAME, OUTPUT_NAME, parity_batches, parity_figures

PLAN_NAME = "model.plan"


class TensorRTError(RuntimeError):
    """TensorRT could not parse, build or run the model."""


def available() -> str | None:
    """None when an engine can be built here, else why not ("no CUDA GPU", …)."""
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    try:
        import tensorrt  # noqa: F401
    except ModuleNotFoundError:
        return "tensorrt not installed"
    except (ImportError, OSError) as err:  # installed, but its CUDA libraries do not load
        return f"tensorrt not usable: {err}"
    return None


def _logger(trt: Any) -> Any:
    return trt.Logger(trt.Logger.WARNING)


def _network_flags(trt: Any) -> int:
    """Explicit batch: implied (and its flag deprecated) from TensorRT 10 on, asked before."""
    if int(trt.__version__.split(".")[0]) >= 10:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)


def build_engine(
    onnx_path: Path,
    dest: Path,
    *,
    min_batch: int = 1,
    opt_batch: int = 32,
    max_batch: int = 64,
    fp16: bool = True,
) -> None:
    """Parse `onnx_path`, build an engine for batches min_batch..max_batch (tuned for
    opt_batch), fp16 kernels allowed when `fp16`, and write it serialised to `dest`."""
    import tensorrt as trt

    if not min_batch <= opt_batch <= max_batch:
        raise ValueError(f"need min ≤ opt ≤ max batch, got {min_batch}, {opt_batch}, {max_batch}")
    logger = _logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TensorRTError(f"TensorRT cannot parse {onnx_path}: {errors}")
    inputs = {network.get_input(i).name: network.get_input(i) for i in range(network.num_inputs)}
    if INPUT_NAME not in inputs:
        raise TensorRTError(f"{onnx_path} has no input '{INPUT_NAME}' (has {sorted(inputs)})")
    _, channels, height, width = inputs[INPUT_NAME].shape
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape(
        INPUT_NAME,
        (min_batch, channels, height, width),
        (opt_batch, channels, height, width),
        (max_batch, channels, height, width),
    )
    config.add_optimization_profile(profile)
    # TensorRT 10 builds weakly typed networks by default: FP16 lets it pick fp16 kernels.
    # Where the flag is gone (strongly typed only), precision follows the ONNX (export.fp16).
    fp16_flag = getattr(trt.BuilderFlag, "FP16", None)
    if fp16 and fp16_flag is not None:
        config.set_flag(fp16_flag)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TensorRTError(f"TensorRT could not build an engine from {onnx_path} (see its log)")
    with open(dest, "wb") as out:
        out.write(serialized)


class EngineRunner:
    """Runs a serialised engine on batches of CPU tensors, with torch CUDA buffers."""

    def __init__(self, plan: Path):
        import tensorrt as trt

        self._trt = trt
        self.runtime = trt.Runtime(_logger(trt))
        self.engine = self.runtime.deserialize_cuda_engine(Path(plan).read_bytes())
        if self.engine is None:
            raise TensorRTError(f"TensorRT cannot load the engine {plan}")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        if set(names) != {INPUT_NAME, OUTPUT_NAME}:
            raise TensorRTError(f"engine tensors {names}, expected {INPUT_NAME}, {OUTPUT_NAME}")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()

    def _torch_dtype(self, name: str) -> torch.dtype:
        trt = self._trt
        dtypes = {trt.float32: torch.float32, trt.float16: torch.float16}
        dtype = self.engine.get_tensor_dtype(name)
        if dtype not in dtypes:
            raise TensorRTError(f"engine tensor '{name}' has unsupported type {dtype}")
        return dtypes[dtype]

    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        """Features of one N×3×H×W batch, as float32 numpy."""
        with torch.cuda.stream(self.stream):  # buffers, copies and the engine on one stream
            images = batch.to("cuda", self._torch_dtype(INPUT_NAME), non_blocking=True)
            images = images.contiguous()
            if not self.context.set_input_shape(INPUT_NAME, tuple(images.shape)):
                raise TensorRTError(f"batch shape {tuple(images.shape)} outside the profile")
            shape = tuple(self.context.get_tensor_shape(OUTPUT_NAME))
            features = torch.empty(shape, dtype=self._torch_dtype(OUTPUT_NAME), device="cuda")
            self.context.set_tensor_address(INPUT_NAME, images.data_ptr())
            self.context.set_tensor_address(OUTPUT_NAME, features.data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise TensorRTError("TensorRT failed to run the engine")
            result = features.float().cpu()  # waits for the stream
        self.stream.synchronize()
        return result.numpy()


def engine_parity_report(
    plan: Path, reference: nn.Module, images: torch.Tensor, batch_sizes: Sequence[int]
) -> dict[str, float]:
    """TensorRT vs the fp32 PyTorch `reference` on real images, per batch size and overall
    (the same figures as the ONNX Runtime gate)."""
    return parity_figures(EngineRunner(plan), reference, parity_batches(images, batch_sizes))
