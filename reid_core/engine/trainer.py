"""The training loop: P×K batches → batched augmentation → forward → losses → step.

Everything around the step (logging, progress, NaN checks) is a hook.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from reid_core.config import AugmentConfig, SolverConfig
from reid_core.data.samplers import PKSampler
from reid_core.engine.augment import BatchAugment
from reid_core.engine.hooks import Hook
from reid_core.engine.solver import build_optimizer, build_scheduler
from reid_core.modeling.model import ReidModel, ReidOutput

# (model output, labels, augmented images) -> named, already weighted loss terms
LossFn = Callable[[ReidOutput, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]


class Trainer:
    """Trains `model` on in-memory uint8 images with integer labels.

    State a hook may read: `epoch`, `iter` (1-based after a step), `max_iter`, `last_losses`.
    """

    def __init__(
        self,
        model: ReidModel,
        images: torch.Tensor,
        labels: np.ndarray,
        sampler: PKSampler,
        loss_fn: LossFn,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        augment: BatchAugment,
        epochs: int,
        hooks: Sequence[Hook] = (),
    ):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.model = model
        self.images = images
        self.device = next(model.parameters()).device
        self.labels = torch.as_tensor(labels, dtype=torch.long, device=self.device)
        self.sampler = sampler
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.augment = augment
        self.epochs = epochs
        self.hooks = list(hooks)
        self.epoch = 0
        self.iter = 0
        self.max_iter = epochs * len(sampler)
        self.last_losses: dict[str, float] = {}

    def train(self) -> ReidModel:
        self.model.train()
        for hook in self.hooks:
            hook.before_train(self)
        for epoch in range(self.epochs):
            self.epoch = epoch
            for batch in self.sampler.epoch(self.epoch):
                self.step(torch.from_numpy(batch))
                for hook in self.hooks:
                    hook.after_step(self)
            for hook in self.hooks:
                hook.after_epoch(self)
        for hook in self.hooks:
            hook.after_train(self)
        return self.model.eval()

    def step(self, index: torch.Tensor) -> None:
        images = self.augment(self.images[index].to(self.device, non_blocking=True))
        labels = self.labels[index.to(self.device)]
        out = self.model(images)
        terms = self.loss_fn(out, labels, images)
        loss = torch.stack(list(terms.values())).sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.iter += 1
        self.last_losses = {k: float(v.detach()) for k, v in terms.items()}


def fit(
    model: ReidModel,
    images: torch.Tensor,
    labels: np.ndarray,
    solver: SolverConfig,
    augment: AugmentConfig,
    loss_fn: LossFn,
    hooks: Sequence[Hook] = (),
) -> ReidModel:
    """Train with the configured sampler, optimizer, schedule and augmentation (seeded).

    Runs where the model's parameters are; images stay in host memory, one batch moves at a time.
    """
    torch.manual_seed(solver.seed)
    sampler = PKSampler(labels, solver.ids_per_batch, solver.images_per_id, seed=solver.seed)
    if len(sampler) == 0:
        raise ValueError("too few identities for one batch")
    optimizer = build_optimizer(model, solver)
    scheduler = build_scheduler(optimizer, solver, len(sampler))
    height, width = images.shape[-2:]
    trainer = Trainer(
        model,
        images,
        labels,
        sampler,
        loss_fn,
        optimizer,
        scheduler,
        BatchAugment(augment, height, width),
        solver.epochs,
        hooks,
    )
    return trainer.train()
