"""Stage: checkpoint → ONNX, gated by ONNX Runtime parity with PyTorch on real images."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from reid_core.atomic import atomic_output, remove_outputs
from reid_core.config import ReidConfig
from reid_core.data.manifest import read_manifest
from reid_core.data.splits import load_split
from reid_core.engine.checkpoint import load_checkpoint
from reid_core.export.onnx import ServingModel, export_onnx, parity_report
from reid_core.tracking.runs import stage_run


class ParityError(RuntimeError):
    """The exported graph does not compute what the PyTorch model computes."""


def run(
    config: ReidConfig, inputs: Mapping[str, Path], outputs: Mapping[str, Path]
) -> dict[str, float]:
    import json

    import mlflow

    cfg = config.export
    remove_outputs(outputs["onnx"])
    model, meta = load_checkpoint(inputs["model"])
    h, w = meta["height"], meta["width"]
    with stage_run("export", config):
        df, _ = read_manifest(inputs["manifest"])
        sample = df[df["split"] == "query"].head(cfg.parity_images)
        images = load_split(inputs["dataset"], sample, "query", h, w).images
        serving = ServingModel(model, cfg.l2_normalize)
        with atomic_output(outputs["onnx"], directory=True) as tmp:
            export_onnx(serving, tmp / "model.onnx", h, w, cfg.opset)
            report = parity_report(serving, tmp / "model.onnx", images, cfg.parity_batch_sizes)
            mlflow.log_metrics(report)
            passed = (
                report["max_abs_diff"] <= cfg.max_abs_diff
                and report["min_cosine"] >= cfg.min_cosine
            )
            if not passed:
                raise ParityError(
                    f"ONNX Runtime differs from PyTorch: max abs diff {report['max_abs_diff']:.3g} "
                    f"(allowed {cfg.max_abs_diff}), min cosine {report['min_cosine']:.6f} "
                    f"(required {cfg.min_cosine})"
                )
            info = {
                **report,
                "parity_passed": passed,
                "height": h,
                "width": w,
                "embedding_dim": meta["embedding_dim"],
                "l2_normalized": cfg.l2_normalize,
                "opset": cfg.opset,
                "source_run_id": meta.get("mlflow_run_id", ""),
            }
            (tmp / "parity.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        mlflow.log_artifacts(str(outputs["onnx"]), "onnx")
    return {k: report[k] for k in ("max_abs_diff", "min_cosine")}
