"""Stage: supervised teacher training on the manifest's train split."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import torch

from reid_core.atomic import write_json
from reid_core.config import ReidConfig
from reid_core.data.splits import contiguous_labels
from reid_core.engine.device import resolve_device
from reid_core.engine.hooks import default_hooks
from reid_core.engine.trainer import fit
from reid_core.modeling import create_model
from reid_core.modeling.losses import ReidLoss
from reid_core.stages._fit import count_ids, finish, load_train_split
from reid_core.tracking.runs import stage_run


def run(
    config: ReidConfig, inputs: Mapping[str, Path], outputs: Mapping[str, Path]
) -> dict[str, float]:
    import mlflow

    cfg = config.train
    with stage_run("train", config):
        split, data_meta = load_train_split(config, inputs["dataset"], inputs["manifest"])
        labels = contiguous_labels(split.pids)
        torch.manual_seed(cfg.solver.seed)  # weight init is part of the seeded run
        model = create_model(cfg.model, count_ids(labels)).to(resolve_device(config.runtime.device))
        loss = ReidLoss(cfg.loss)
        start = time.perf_counter()
        fit(
            model,
            split.images,
            labels,
            cfg.solver,
            cfg.augment,
            lambda out, y, _images: loss(out, y),
            default_hooks("train", cfg.log_every),
        )
        metrics = {
            "train_images": float(len(labels)),
            "train_ids": float(count_ids(labels)),
            "train_seconds": time.perf_counter() - start,
        }
        mlflow.log_metrics(metrics)
        finish("train", config, model, data_meta, outputs["checkpoint"], {"role": "teacher"})
        write_json(outputs["metrics"], metrics)
    return metrics
