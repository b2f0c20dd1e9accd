"""Stage: a smaller student trained on the teacher's soft logits plus its own re-id loss."""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping
from pathlib import Path

import torch

from reid_core.atomic import write_json
from reid_core.config import ReidConfig
from reid_core.distill.losses import DistillLoss
from reid_core.engine.checkpoint import load_checkpoint
from reid_core.engine.device import resolve_device
from reid_core.engine.hooks import default_hooks
from reid_core.engine.trainer import TrainData, fit
from reid_core.modeling import create_model
from reid_core.stages._fit import count_ids, finish, load_train_split, state_dir
from reid_core.tracking.runs import stage_run


def run(
    config: ReidConfig, inputs: Mapping[str, Path], outputs: Mapping[str, Path]
) -> dict[str, float]:
    import mlflow

    cfg = config.distill
    with stage_run("distill", config):
        teacher, teacher_meta = load_checkpoint(inputs["teacher"])
        split, data_meta = load_train_split(config, inputs["dataset"], inputs["manifest"])
        data = TrainData.from_split(split)
        num_ids = count_ids(data.labels)
        teacher_classes = teacher.num_classes
        if teacher_classes != num_ids:
            raise ValueError(
                f"teacher {inputs['teacher']} classifies {teacher_classes} ids but this train "
                f"split has {num_ids}: distill on the data the teacher was trained on"
            )
        torch.manual_seed(cfg.solver.seed)  # weight init is part of the seeded run
        device = resolve_device(config.runtime.device)
        teacher.to(device)
        student = create_model(cfg.model, num_ids).to(device)
        start = time.perf_counter()
        resume_dir = state_dir(config, "distill", cfg, data_meta)
        fit(student, data, cfg.solver, cfg.augment, DistillLoss(teacher, cfg),
            default_hooks("distill", cfg.log_every), state_dir=resume_dir)  # fmt: skip
        params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        metrics = {
            "train_seconds": time.perf_counter() - start,
            "student_params": float(params(student)),
            "teacher_params": float(params(teacher)),
        }
        mlflow.log_metrics(metrics)
        finish(
            "distill",
            config,
            student,
            data_meta,
            outputs["checkpoint"],
            {"role": "student", "teacher_run_id": teacher_meta.get("mlflow_run_id", "")},
        )
        write_json(outputs["metrics"], metrics)
        shutil.rmtree(resume_dir, ignore_errors=True)  # the run is complete
    return metrics
