"""Trainer hooks: everything around the optimisation step lives here, not in the loop."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reid_core.engine.trainer import Trainer


class Hook:
    """Override any of these; the trainer calls them in order of registration."""

    def before_train(self, trainer: Trainer) -> None: ...

    def after_step(self, trainer: Trainer) -> None: ...

    def after_epoch(self, trainer: Trainer) -> None: ...

    def after_train(self, trainer: Trainer) -> None: ...


class NaNGuard(Hook):
    """Stop at the first non-finite loss, naming the iteration and the loss term."""

    def after_step(self, trainer: Trainer) -> None:
        for name, value in trainer.last_losses.items():
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"{name} became {value} at iteration {trainer.iter} (epoch {trainer.epoch}); "
                    "lower the learning rate or check the data"
                )


class MetricLogger(Hook):
    """Losses and learning rate to MLflow every `every` iterations (step = iteration)."""

    def __init__(self, every: int, prefix: str = ""):
        self.every = every
        self.prefix = prefix

    def after_step(self, trainer: Trainer) -> None:
        if trainer.iter % self.every and trainer.iter != trainer.max_iter:
            return
        import mlflow

        metrics = {f"{self.prefix}{k}": v for k, v in trainer.last_losses.items()}
        metrics[f"{self.prefix}lr"] = trainer.optimizer.param_groups[0]["lr"]
        mlflow.log_metrics(metrics, step=trainer.iter)


class ProgressBar(Hook):
    """A tqdm bar over iterations with the current loss and LR."""

    def __init__(self, desc: str):
        self.desc = desc
        self.bar = None

    def before_train(self, trainer: Trainer) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=trainer.max_iter, desc=self.desc, unit="it", dynamic_ncols=True)

    def after_step(self, trainer: Trainer) -> None:
        total = sum(trainer.last_losses.values())
        lr = trainer.optimizer.param_groups[0]["lr"]
        self.bar.set_postfix(loss=f"{total:.3f}", lr=f"{lr:.2e}", epoch=trainer.epoch)
        self.bar.update(1)

    def after_train(self, trainer: Trainer) -> None:
        self.bar.close()


def default_hooks(desc: str, log_every: int, prefix: str = "") -> list[Hook]:
    """What every training stage wants: stop on NaN, log to MLflow, show progress."""
    return [NaNGuard(), MetricLogger(log_every, prefix), ProgressBar(desc)]
