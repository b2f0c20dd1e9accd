"""Stage: register the exported model, move `champion` if it wins, publish it to Triton."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from reid_core.artifacts import EvaluationRecord, ExportRecord, ModelLineage, PromotionRecord
from reid_core.atomic import atomic_output
from reid_core.config import ReidConfig
from reid_core.engine.checkpoint import META, load_checkpoint
from reid_core.export.onnx import OnnxFileError, latency_ms, onnx_interface
from reid_core.serving.repositories import open_repository
from reid_core.serving.triton import MODEL_FILES, publication
from reid_core.tracking import registry
from reid_core.tracking.compare import EVAL_DVC_PREFIX, EVAL_METRIC_TAG, TEST_SET_METRICS
from reid_core.tracking.promotion import decide
from reid_core.tracking.runs import PIPELINE_TAG, stage_run
from reid_core.tracking.trained_by import training_run


def _served_file(export: Path, backend: str) -> Path:
    """The exported file the repository flavour serves; a missing TensorRT engine is an error."""
    path = export / MODEL_FILES[backend]
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: triton.backend={backend} needs an export that built a "
            "TensorRT engine (export.tensorrt on a machine with a GPU)"
        )
    return path


def run(
    config: ReidConfig, inputs: Mapping[str, Path], outputs: Mapping[str, Path]
) -> dict[str, float]:
    import mlflow

    cfg = config.promote
    parity = ExportRecord.load(inputs["onnx"])
    served = _served_file(inputs["onnx"], config.triton.backend)
    evaluation = EvaluationRecord.load_file(inputs["evaluation"])
    # every input is read whole before the lock is taken or anything is registered
    model, meta = load_checkpoint(inputs["model"])
    lineage = ModelLineage.from_meta(meta, Path(inputs["model"]) / META)
    onnx_file = inputs["onnx"] / ExportRecord.MODEL_FILE
    graph = onnx_interface(onnx_file)
    if graph != (parity.height, parity.width, parity.embedding_dim):
        raise OnnxFileError(
            f"{onnx_file} takes {graph[0]}×{graph[1]} images to {graph[2]} dims, but "
            f"{inputs['onnx'] / ExportRecord.FILE} describes another export"
        )
    with stage_run("promote", config) as run:
        trained_by = training_run(inputs["model"])
        trained_tags = trained_by.data.tags if trained_by is not None else {}
        latency = latency_ms(onnx_file, torch.zeros(1, 3, parity.height, parity.width))
        tags = {
            "reid.git_commit": trained_tags.get("reid.git_commit", ""),
            "reid.config_hash": lineage.config_hash,
            "reid.data_fingerprint": lineage.data_fingerprint,
            "reid.dvc_md5": lineage.dvc_md5,
            "reid.train_run_id": trained_by.info.run_id if trained_by is not None else "",
            "reid.model_stage": lineage.stage,
            "reid.eval_set_hash": evaluation.eval_set_hash,
            "reid.mAP": evaluation.metrics["mAP"],
            "reid.rank1": evaluation.metrics["rank1"],
            "reid.mINP": evaluation.metrics["mINP"],
            "reid.parity_max_abs_diff": parity.max_abs_diff,
            "reid.parity_passed": "true" if parity.parity_passed else "false",
            "reid.parity_min_cosine": parity.min_cosine,
            "reid.latency_ms": latency,  # ONNX Runtime on this machine, batch 1
            "reid.promote_run_id": run.info.run_id,
            "reid.parent_run_id": run.data.tags.get("mlflow.parentRunId", ""),
            "reid.pipeline_run_id": run.data.tags.get(PIPELINE_TAG, ""),
            # where the training data was fetched from (reference, revision, DVC md5, ETags)
            **lineage.data_lineage_tags(),
            # the DVC hash of every dataset behind the figures: training data above, test sets
            **{
                f"{EVAL_DVC_PREFIX}{name}": test_set.dvc_md5
                for name, test_set in evaluation.test_sets.items()
            },
            # and each test set's figures
            **{
                EVAL_METRIC_TAG.format(test_set=name, metric=metric): test_set.metrics[metric]
                for name, test_set in evaluation.test_sets.items()
                for _, metric in TEST_SET_METRICS
            },
        }
        client = mlflow.MlflowClient()
        # Registering, deciding, publishing and moving the aliases happen under one lock and
        # as one change: a failure after the publish undoes it (Triton keeps serving what it
        # served) and puts the aliases back; every registered version gets a decision tag.
        with open_repository(config.triton.repository).lock(cfg.model_name):
            version = registry.register_model(
                onnx_file,
                model,
                cfg.model_name,
                tags,
                l2_normalize=parity.l2_normalized,
            )
            try:
                challenger = registry.candidate(cfg.model_name, version)
                # Judged against the champion on its own evaluation set: a first model on a
                # new dataset is compared with nothing, not refused for another set's champion.
                serving = registry.champion(cfg.model_name)
                current = registry.champion(cfg.model_name, challenger.eval_set_hash)
                decision = decide(challenger, current, cfg.policy())
                published, triton_version = "", None
                if decision.promote:
                    with (
                        publication(
                            config.triton, cfg.model_name, served, parity.height,
                            parity.width, parity.embedding_dim,
                        ) as (triton_version, published),
                        registry.aliases_restored_on_failure(cfg.model_name),
                    ):  # fmt: skip
                        registry.set_champion(cfg.model_name, version, serving)
                        client.set_model_version_tag(
                            cfg.model_name, str(version), "reid.triton_version", str(triton_version)
                        )
                        _record(client, cfg.model_name, version, decision.summary())
                else:
                    _record(client, cfg.model_name, version, decision.summary())
            except Exception as err:
                registry.record_failed_promotion(cfg.model_name, version, err)
                raise
        report = decision.markdown(cfg.model_name, challenger, current)
        record = PromotionRecord(
            model_name=cfg.model_name,
            version=version,
            promoted=decision.promote,
            reasons=decision.reasons,
            previous_champion=serving.version if serving else None,
            evaluation_set=challenger.eval_set_hash,
            triton_version=triton_version,
            triton_version_path=published,
            triton_repository=str(config.triton.repository),
            mAP=evaluation.metrics["mAP"],
            rank1=evaluation.metrics["rank1"],
        )
        mlflow.log_text(record.to_json(), "promotion.json")
        mlflow.log_text(report, "promotion.md")
        record.save_file(outputs["decision"])
        with atomic_output(outputs["markdown"]) as tmp:
            tmp.write_text(report)
    return {"version": float(version), "promoted": float(decision.promote)}


def _record(client, model_name: str, version: int, summary: str) -> None:
    client.set_model_version_tag(model_name, str(version), registry.PROMOTION_TAG, summary)
