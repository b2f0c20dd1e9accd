"""Stage: pseudo-label rounds on the target domain's train split (its ids stay hidden).

A round: target features → DBSCAN pseudo labels → fine-tune with a fresh classifier. True ids
are read only to report pseudo-label quality (NMI, ARI, pair precision/recall).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from reid_core.atomic import write_json
from reid_core.config import ReidConfig
from reid_core.data.splits import contiguous_labels
from reid_core.engine.checkpoint import load_checkpoint
from reid_core.engine.device import resolve_device
from reid_core.engine.hooks import default_hooks
from reid_core.engine.trainer import TrainData, fit
from reid_core.evaluation import extract_features
from reid_core.modeling.losses import ReidLoss
from reid_core.stages._fit import finish, load_train_split
from reid_core.tracking.runs import stage_run
from reid_core.uda.pseudo_labels import (
    PseudoLabelError,
    cluster_features,
    label_quality,
    outliers_as_singletons,
)


def run(
    config: ReidConfig, inputs: Mapping[str, Path], outputs: Mapping[str, Path]
) -> dict[str, float]:
    import mlflow

    cfg = config.adapt
    with stage_run("adapt", config):
        model, source_meta = load_checkpoint(inputs["model"])
        model.to(resolve_device(config.runtime.device))
        split, data_meta = load_train_split(config, inputs["dataset"], inputs["manifest"])
        loss = ReidLoss(cfg.loss)
        metrics: dict[str, float] = {}
        start = time.perf_counter()
        for rnd in range(cfg.rounds):
            feats = extract_features(model, split.images, config.evaluate.batch_size)
            try:
                pseudo = cluster_features(feats, cfg.eps, cfg.min_samples, cfg.k1, cfg.k2)
            except PseudoLabelError as err:
                if rnd == 0:
                    raise
                mlflow.set_tag("reid.stopped", f"round {rnd + 1}: {err}")
                print(f"adapt: stopping before round {rnd + 1}, keeping round {rnd}'s model: {err}")
                break
            quality = label_quality(pseudo, split.pids)
            metrics = {
                "clusters": float(len(np.unique(pseudo[pseudo >= 0]))),
                "outliers": float((pseudo < 0).sum()),
                "true_ids": float(len(np.unique(split.pids))),
                **{f"pseudo_{k}": v for k, v in quality.items()},
            }
            mlflow.log_metrics(metrics, step=rnd)
            keep = np.ones(len(pseudo), bool) if cfg.keep_outliers else pseudo >= 0
            labels = outliers_as_singletons(pseudo) if cfg.keep_outliers else pseudo
            labels = contiguous_labels(labels[keep])
            model.reset_classifier(int(labels.max()) + 1)
            solver = cfg.solver.model_copy(update={"seed": cfg.solver.seed + rnd})
            kept = np.flatnonzero(keep)
            fit(
                model,
                TrainData(split.images[kept], labels, split.camids[kept]),
                solver,
                cfg.augment,
                loss,
                default_hooks(f"adapt round {rnd + 1}", cfg.log_every, prefix=f"round{rnd + 1}_"),
            )
            metrics["rounds_completed"] = float(rnd + 1)
        metrics["train_seconds"] = time.perf_counter() - start
        mlflow.log_metrics({"rounds_completed": metrics["rounds_completed"]})
        finish(
            "adapt",
            config,
            model,
            data_meta,
            outputs["checkpoint"],
            {"role": "adapted", "source_run_id": source_meta.get("mlflow_run_id", "")},
        )
        write_json(outputs["metrics"], metrics)
    return metrics
