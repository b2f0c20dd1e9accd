"""Stage: checkpoint → ONNX (fp32, or fp16 inside), gated by ONNX Runtime parity with the fp32
PyTorch model on real images; on a GPU also a TensorRT engine, gated the same way."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

import torch

from reid_core.artifacts import ExportRecord
from reid_core.atomic import atomic_output, remove_outputs
from reid_core.config import ExportConfig, ReidConfig
from reid_core.data.manifest import read_manifest
from reid_core.data.splits import load_split
from reid_core.engine.checkpoint import load_checkpoint
from reid_core.export import tensorrt
from reid_core.export.onnx import ServingModel, export_onnx, latency_ms, parity_report
from reid_core.tracking.runs import stage_run


class ParityError(RuntimeError):
    """The exported graph does not compute what the PyTorch model computes."""


def check_parity(
    what: str, report: Mapping[str, float], max_abs_diff: float, min_cosine: float
) -> None:
    """Raise `ParityError` when `report` is outside the tolerances."""
    if report["max_abs_diff"] <= max_abs_diff and report["min_cosine"] >= min_cosine:
        return
    raise ParityError(
        f"{what} differs from PyTorch: max abs diff {report['max_abs_diff']:.3g} "
        f"(allowed {max_abs_diff}), min cosine {report['min_cosine']:.6f} "
        f"(required {min_cosine})"
    )


def _tensorrt_engine(
    config: ReidConfig, folder: Path, reference: ServingModel, images: torch.Tensor
) -> tuple[str, dict[str, float]]:
    """Build and gate `model.plan` next to `model.onnx` when TensorRT can run here:
    (status for parity.json, figures prefixed `tensorrt_`, also logged to MLflow)."""
    import mlflow

    cfg = config.export
    if not cfg.tensorrt:
        return "disabled", {}
    reason = tensorrt.available()
    if reason is not None:
        print(f"TensorRT engine skipped: {reason}", file=sys.stderr)
        return f"skipped: {reason}", {}
    max_batch = max(config.triton.max_batch_size, *cfg.parity_batch_sizes)
    opt_batch = min(max(config.triton.preferred_batch_sizes, default=max_batch), max_batch)
    plan = folder / tensorrt.PLAN_NAME
    tensorrt.build_engine(
        folder / ExportRecord.MODEL_FILE,
        plan,
        min_batch=1,
        opt_batch=opt_batch,
        max_batch=max_batch,
    )
    report = tensorrt.engine_parity_report(plan, reference, images, cfg.parity_batch_sizes)
    mlflow.log_metrics({f"tensorrt_{k}": v for k, v in report.items()})
    check_parity("TensorRT (fp16)", report, cfg.fp16_max_abs_diff, cfg.fp16_min_cosine)
    return f"built: {tensorrt.PLAN_NAME}", {f"tensorrt_{k}": v for k, v in report.items()}


def _tolerances(cfg: ExportConfig) -> tuple[float, float]:
    if cfg.fp16:
        return cfg.fp16_max_abs_diff, cfg.fp16_min_cosine
    return cfg.max_abs_diff, cfg.min_cosine


def run(
    config: ReidConfig, inputs: Mapping[str, Path], outputs: Mapping[str, Path]
) -> dict[str, float]:
    import mlflow

    cfg = config.export
    remove_outputs(outputs["onnx"])
    model, meta = load_checkpoint(inputs["model"])
    h, w = meta["height"], meta["width"]
    max_abs_diff, min_cosine = _tolerances(cfg)
    with stage_run("export", config):
        df, _ = read_manifest(inputs["manifest"])
        sample = df[df["split"] == "query"].head(cfg.parity_images)
        images = load_split(inputs["dataset"], sample, "query", h, w).images
        reference = ServingModel(model, cfg.l2_normalize)  # fp32: what every graph must match
        exported = ServingModel(model, cfg.l2_normalize, fp16=True) if cfg.fp16 else reference
        with atomic_output(outputs["onnx"], directory=True) as tmp:
            onnx_file = tmp / ExportRecord.MODEL_FILE
            export_onnx(exported, onnx_file, h, w, cfg.opset)
            report = parity_report(reference, onnx_file, images, cfg.parity_batch_sizes)
            mlflow.log_metrics(report)
            precision = "ONNX Runtime (fp16 graph)" if cfg.fp16 else "ONNX Runtime"
            check_parity(precision, report, max_abs_diff, min_cosine)
            status, engine_report = _tensorrt_engine(config, tmp, reference, images)
            mlflow.set_tag("reid.tensorrt", status)
            mlflow.log_metric("latency_ms_batch1", latency_ms(onnx_file, images[:1]))
            ExportRecord(
                height=h,
                width=w,
                embedding_dim=meta["embedding_dim"],
                l2_normalized=cfg.l2_normalize,
                fp16=cfg.fp16,
                opset=cfg.opset,
                parity_passed=True,
                max_abs_diff=report["max_abs_diff"],
                min_cosine=report["min_cosine"],
                tolerance_max_abs_diff=max_abs_diff,
                tolerance_min_cosine=min_cosine,
                parity_batch_sizes=list(cfg.parity_batch_sizes),
                onnx_bytes=onnx_file.stat().st_size,
                tensorrt=status,
                figures={
                    k: v
                    for k, v in {**report, **engine_report}.items()
                    if k not in ("max_abs_diff", "min_cosine")
                },
            ).save(tmp)
        mlflow.log_artifacts(str(outputs["onnx"]), "onnx")
    return {k: v for k, v in {**report, **engine_report}.items() if "_batch" not in k}
