"""Train a tiny model on generated data with `fit`; run directly or under torchrun.

Used by the resume (real SIGKILL) and distributed-equivalence tests. Rank 0 writes the final
weights to --out as safetensors.

    python tiny_fit.py --out w.safetensors [--state-dir D] [--solver '{"lr": 0.1}']
    torchrun --nproc_per_node 2 tiny_fit.py --out w.safetensors ...
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

import numpy as np
import torch
from safetensors.torch import save_file

from reid_core.engine.distributed import context_from_env
from reid_core.engine.hooks import Hook
from reid_core.engine.trainer import TrainData, fit
from reid_core.modeling import create_model
from reid_core.modeling.losses import ReidLoss
from reid_core.options import AugmentConfig, LossConfig, ModelConfig, SolverConfig

NUM_IDS, PER_ID, CAMS = 16, 4, 2


class SlowSteps(Hook):
    """Sleep after each step so a test can kill the process mid-run."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def after_step(self, trainer) -> None:
        time.sleep(self.seconds)


def tiny_data() -> TrainData:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(NUM_IDS), PER_ID)
    # each identity gets its own colour, so the task is learnable
    base = rng.integers(0, 256, size=(NUM_IDS, 3, 1, 1))
    noise = rng.integers(-40, 40, size=(len(labels), 3, 32, 16))
    images = np.clip(base[labels] + noise, 0, 255).astype(np.uint8)
    camids = np.tile(np.arange(CAMS), len(labels) // CAMS)
    return TrainData(torch.from_numpy(images), labels, camids)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--state-dir")
    parser.add_argument("--solver", default="{}", help="SolverConfig fields as JSON")
    parser.add_argument("--augment", default="{}", help="AugmentConfig fields as JSON")
    parser.add_argument("--model", default="{}", help="ModelConfig fields as JSON")
    parser.add_argument("--loss", default="{}", help="LossConfig fields as JSON")
    parser.add_argument("--sleep", type=float, default=0.0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    solver = SolverConfig(**{"epochs": 3, "ids_per_batch": 4, "images_per_id": 2,
                             **json.loads(args.solver)})  # fmt: skip
    augment = AugmentConfig(**json.loads(args.augment))
    model_cfg = ModelConfig(**{"backbone": "resnet18", "base_width": 8, **json.loads(args.model)})
    loss = ReidLoss(LossConfig(**json.loads(args.loss)))
    context = context_from_env(torch.device("cpu"))
    torch.manual_seed(solver.seed)
    model = create_model(model_cfg, NUM_IDS)
    hooks = [SlowSteps(args.sleep)] if args.sleep else []
    fit(model, tiny_data(), solver, augment, loss, hooks,
        state_dir=args.state_dir, context=context)  # fmt: skip
    if context.is_main:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, args.out)


if __name__ == "__main__":
    main()
