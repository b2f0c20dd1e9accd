"""Stage: a smaller student trained from frozen teachers plus its own re-id loss."""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping
from pathlib import Path

import torch

from reid_core.atomic import write_json
from reid_core.config import ReidConfig
from reid_core.distill.losses import DistillLoss
from reid_core.engine.checkpoint import load_checkpoint, weights_digest
from reid_core.engine.device import resolve_device
from reid_core.engine.hooks import default_hooks
from reid_core.engine.trainer import TrainData, fit
from reid_core.modeling import create_model
from reid_core.modeling.model import ReidModel
from reid_core.stages._fit import count_ids, count_parameters, finish, load_train_split, state_dir
from reid_core.tracking.metric_sink import MlflowSink
from reid_core.tracking.registry import checkpoint_folder
from reid_core.tracking.runs import setup_mlflow, stage_run


def run(
    config: ReidConfig, inputs: Mapping[str, Path | tuple[Path, ...]], outputs: Mapping[str, Path]
) -> dict[str, float]:
    import mlflow

    cfg = config.distill
    split, data_meta = load_train_split(config, inputs["dataset"], inputs["manifest"])
    data = TrainData.from_split(split)
    num_ids = count_ids(data.labels)
    setup_mlflow(config)  # a teacher may be an MLflow URI
    teachers, sources = load_teachers(inputs["teacher"], num_ids, cfg.logit_weight > 0)
    # the state folder first: a re-run of an interrupted stage reopens the run recorded there
    resume_dir = state_dir(config, "distill", cfg, data_meta, [s["weights"] for s in sources])
    with stage_run("distill", config, resume_dir):
        mlflow.log_param("teachers", ", ".join(s["source"] for s in sources))
        torch.manual_seed(cfg.solver.seed)  # weight init is part of the seeded run
        device = resolve_device(config.runtime.device)
        for teacher in teachers:
            teacher.to(device)
        student = create_model(cfg.model, num_ids).to(device)
        loss = DistillLoss(student, teachers, cfg, (config.data.height, config.data.width))
        start = time.perf_counter()
        try:
            hooks = default_hooks("distill", cfg.log_every, [MlflowSink()])
            fit(student, data, cfg.solver, cfg.augment, loss, hooks, state_dir=resume_dir)
        finally:
            loss.close()
        mlflow.log_metric("train_seconds", time.perf_counter() - start)
        metrics = {
            "student_params": float(count_parameters(student)),
            "teacher_params": float(sum(count_parameters(t) for t in teachers)),
            "teachers": float(len(teachers)),
        }
        mlflow.log_metrics(metrics)
        finish(
            "distill",
            config,
            student,
            data_meta,
            outputs["checkpoint"],
            role="student",
            teachers=[s["source"] for s in sources],
            teacher_weights_sha256=[s["weights"] for s in sources],
        )
        write_json(outputs["metrics"], metrics)
    shutil.rmtree(resume_dir, ignore_errors=True)  # complete, and its run is closed
    return metrics


def load_teachers(
    sources: tuple[Path, ...], num_ids: int, need_logits: bool
) -> tuple[list[ReidModel], list[dict[str, str]]]:
    """Each teacher (a folder or an MLflow URI) loaded, frozen, in eval mode, with its origin.

    Logit distillation compares class scores, so those teachers must classify the same ids.
    """
    teachers, origins = [], []
    for source in sources:
        folder = checkpoint_folder(source)
        model, _ = load_checkpoint(folder)
        if need_logits and model.num_classes != num_ids:
            raise ValueError(
                f"teacher {source} classifies {model.num_classes} ids but this train split has "
                f"{num_ids}: distil on the data the teacher was trained on, or set "
                "distill.logit_weight=0 to distil features only"
            )
        teachers.append(model.eval().requires_grad_(False))
        origins.append({"source": str(source), "weights": weights_digest(folder)})
    return teachers, origins
