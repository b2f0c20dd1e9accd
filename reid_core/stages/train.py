"""Stage: supervised teacher training on the manifest's train split.

Runs as one process, under torchrun (`torchrun --nproc_per_node N -m reid_core.cli train
...`), or as `runtime.procs_per_node` workers it starts itself (one per GPU; in a
training-operator pod, PET_NPROC_PER_NODE of them); only rank 0 logs and writes outputs. An
interrupted run resumes from its last training state in `runtime.state_dir`, logging into the
same MLflow run.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping
from pathlib import Path

import torch

from reid_core.atomic import write_json
from reid_core.config import ReidConfig
from reid_core.engine.device import resolve_device
from reid_core.engine.distributed import (
    context_from_env,
    is_launched_worker,
    local_device,
    processes_per_node,
)
from reid_core.engine.hooks import default_hooks
from reid_core.engine.trainer import TrainData, fit
from reid_core.modeling import create_model
from reid_core.modeling.losses import ReidLoss
from reid_core.stages._fit import (
    count_ids,
    evaluation_hook,
    finish,
    load_train_split,
    main_process_only,
    state_dir,
)
from reid_core.stages.data_parallel import run_as_workers
from reid_core.tracking.metric_sink import MlflowSink
from reid_core.tracking.runs import stage_run


def run(
    config: ReidConfig, inputs: Mapping[str, Path], outputs: Mapping[str, Path]
) -> dict[str, float]:
    import mlflow

    procs = processes_per_node(config.runtime.procs_per_node)
    if procs > 1 and not is_launched_worker():
        return run_as_workers("train", config, inputs, outputs, procs)
    cfg = config.train
    device = resolve_device(config.runtime.device)
    context = context_from_env(device)
    device = local_device(device, context)
    # the state folder first: a re-run of an interrupted stage reopens the run recorded there
    split, data_meta = load_train_split(config, inputs["dataset"], inputs["manifest"])
    resume_dir = state_dir(config, "train", cfg, data_meta)
    with main_process_only(context.is_main, lambda: stage_run("train", config, resume_dir)):
        data = TrainData.from_split(split)
        torch.manual_seed(cfg.solver.seed)  # weight init is part of the seeded run
        model = create_model(cfg.model, count_ids(data.labels))
        model.to(device)
        loss = ReidLoss(cfg.loss)
        hooks = default_hooks("train", cfg.log_every, [MlflowSink()])
        if context.is_main:
            hooks += evaluation_hook(config, inputs["dataset"], inputs["manifest"],
                                     cfg.solver.eval_every, str(device))  # fmt: skip
        start = time.perf_counter()
        fit(model, data, cfg.solver, cfg.augment, loss, hooks,
            state_dir=resume_dir, context=context)  # fmt: skip
        if not context.is_main:
            return {}
        metrics = {
            "train_images": float(len(data.labels)),
            "train_ids": float(count_ids(data.labels)),
        }
        mlflow.log_metrics({**metrics, "train_seconds": time.perf_counter() - start})
        finish("train", config, model, data_meta, outputs["checkpoint"], role="teacher")
        write_json(outputs["metrics"], metrics)
    shutil.rmtree(resume_dir, ignore_errors=True)  # complete, and its run is closed
    return metrics
