"""Stage: query and gallery features → CMC, mAP, mINP (Market-1501 protocol)."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from reid_core.atomic import atomic_output, write_json
from reid_core.config import ReidConfig
from reid_core.data.manifest import read_manifest
from reid_core.data.splits import load_split
from reid_core.engine.checkpoint import load_checkpoint
from reid_core.engine.device import resolve_device
from reid_core.evaluation import evaluate_rank, extract_features, tar_at_far
from reid_core.evaluation.protocol import evaluation_distances
from reid_core.evaluation.reports import curves, rank_list_image
from reid_core.tracking.runs import stage_run


def run(
    config: ReidConfig, inputs: Mapping[str, Path], outputs: Mapping[str, Path]
) -> dict[str, float]:
    import mlflow

    cfg = config.evaluate
    model, model_meta = load_checkpoint(inputs["model"])
    model.to(resolve_device(config.runtime.device))
    df, data_meta = read_manifest(inputs["manifest"])
    domain = data_meta.get("domain", "")
    role = model_meta.get("role", model_meta["stage"])
    with stage_run("evaluate", config):
        mlflow.set_tags(
            {
                "reid.model_stage": model_meta["stage"],
                "reid.domain": domain,
                "reid.model_run_id": model_meta.get("mlflow_run_id", ""),
                "reid.eval_set_hash": data_meta.get("eval_set_hash", ""),
                "mlflow.runName": f"evaluate {role}@{domain}",
            }
        )
        h, w = model_meta["height"], model_meta["width"]
        query = load_split(inputs["dataset"], df, "query", h, w)
        gallery = load_split(inputs["dataset"], df, "gallery", h, w)
        q_feats = extract_features(model, query.images, cfg.batch_size, cfg.flip)
        g_feats = extract_features(model, gallery.images, cfg.batch_size, cfg.flip)
        dist = evaluation_distances(q_feats, g_feats, cfg)
        result = evaluate_rank(
            dist, query.pids, gallery.pids, query.camids, gallery.camids, cfg.max_rank
        )
        verification = tar_at_far(
            dist, query.pids, gallery.pids, query.camids, gallery.camids, cfg.fars
        )
        metrics = {**result.as_metrics(), **verification.as_metrics()}
        mlflow.log_metrics(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            title = f"{role}@{domain}"
            rank_list_image(
                Path(tmp) / "rank_list.png",
                inputs["dataset"],
                dist,
                (query.paths, query.pids, query.camids),
                (gallery.paths, gallery.pids, gallery.camids),
            )
            curves(
                Path(tmp),
                result,
                verification,
                dist,
                query.pids,
                gallery.pids,
                query.camids,
                gallery.camids,
                title,
            )
            mlflow.log_artifacts(tmp, "reports")
        with atomic_output(outputs["features"]) as tmp, open(tmp, "wb") as f:
            np.savez(
                f,
                query_feats=q_feats,
                query_pids=query.pids,
                query_camids=query.camids,
                query_paths=query.paths.astype(str),
                gallery_feats=g_feats,
                gallery_pids=gallery.pids,
                gallery_camids=gallery.camids,
                gallery_paths=gallery.paths.astype(str),
                normalized=np.array(False),
            )
        write_json(
            outputs["metrics"],
            {
                **metrics,
                "model_stage": model_meta["stage"],
                "domain": domain,
                "metric": cfg.metric,
                "flip": cfg.flip,
                "query_expansion": cfg.query_expansion,
                "rerank": cfg.rerank,
                "eval_set_hash": data_meta.get("eval_set_hash", ""),
            },
        )
    return metrics
