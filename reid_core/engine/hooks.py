"""Trainer hooks: everything around the optimisation step lives here, not in the loop.

A hook may keep state that must survive a restart (`state_dict`/`load_state_dict`); the
trainer saves it with the rest of the training state under the hook's `name`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from reid_core.engine.ema import ModelEMA
from reid_core.engine.precise_bn import recompute_bn_stats
from reid_core.engine.sinks import MetricSink
from reid_core.engine.training_state import save_state

if TYPE_CHECKING:
    from reid_core.engine.trainer import Trainer


class Hook:
    """Override any of these; the trainer calls them in order of registration.

    `main_only` hooks run on rank 0 of a distributed job only (logging, files).
    """

    main_only = False

    @property
    def name(self) -> str:
        return type(self).__name__

    def before_train(self, trainer: Trainer) -> None: ...

    def before_step(self, trainer: Trainer) -> None: ...

    def after_step(self, trainer: Trainer) -> None: ...

    def after_epoch(self, trainer: Trainer) -> None: ...

    def after_train(self, trainer: Trainer) -> None: ...

    def state_dict(self) -> dict[str, Any] | None:
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class FreezeBackbone(Hook):
    """Train only the heads for the first `iters` iterations: a new classifier's random
    gradients then cannot wreck pretrained backbone features (FastReID's freeze)."""

    def __init__(self, iters: int):
        self.iters = iters

    def before_train(self, trainer: Trainer) -> None:
        # from the iteration training starts at, so a resumed run sees the same flags
        trainer.model.backbone.requires_grad_(trainer.iter >= self.iters)

    def before_step(self, trainer: Trainer) -> None:
        if trainer.iter == self.iters:
            trainer.model.backbone.requires_grad_(True)


class EMAHook(Hook):
    """Keeps an EMA of the weights; at the end the model takes the averaged weights."""

    def __init__(self, decay: float):
        self.decay = decay
        self.ema: ModelEMA | None = None
        self._pending: dict[str, torch.Tensor] | None = None

    def before_train(self, trainer: Trainer) -> None:
        self.ema = ModelEMA(trainer.model, self.decay)
        if self._pending is not None:
            self.ema.load_state_dict(self._pending)
            self._pending = None

    def after_step(self, trainer: Trainer) -> None:
        self.ema.update(trainer.model)

    def after_train(self, trainer: Trainer) -> None:
        self.ema.copy_to(trainer.model)

    def state_dict(self) -> dict[str, Any] | None:
        return self.ema.state_dict() if self.ema is not None else None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._pending = state


class PreciseBN(Hook):
    """After training, recompute BN statistics over `iters` augmented training batches."""

    def __init__(self, iters: int):
        self.iters = iters

    def after_train(self, trainer: Trainer) -> None:
        recompute_bn_stats(trainer.model, trainer.precise_bn_batches(self.iters),
                           trainer.forward_images)  # fmt: skip


class NaNGuard(Hook):
    """Stop at a non-finite loss, naming the iteration and the loss term.

    Checked every `every` iterations so the device need not synchronise on every step.
    """

    def __init__(self, every: int = 1):
        self.every = every

    def after_step(self, trainer: Trainer) -> None:
        if trainer.iter % self.every and trainer.iter != trainer.max_iter:
            return
        for name, value in trainer.losses().items():
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"{name} became {value} at iteration {trainer.iter} (epoch {trainer.epoch}); "
                    "lower the learning rate, enable gradient clipping or check the data"
                )


class MetricLogger(Hook):
    """Losses and learning rate to the sinks every `every` iterations (step = iteration)."""

    main_only = True

    def __init__(self, every: int, sinks: Sequence[MetricSink], prefix: str = ""):
        self.every = every
        self.sinks = list(sinks)
        self.prefix = prefix

    def after_step(self, trainer: Trainer) -> None:
        if trainer.iter % self.every and trainer.iter != trainer.max_iter:
            return
        metrics = {f"{self.prefix}{k}": v for k, v in trainer.losses().items()}
        metrics[f"{self.prefix}lr"] = trainer.optimizer.param_groups[0]["lr"]
        for sink in self.sinks:
            sink.log_metrics(metrics, trainer.iter)


class ProgressBar(Hook):
    """A tqdm bar over iterations with the loss and LR refreshed every `every` iterations."""

    main_only = True

    def __init__(self, desc: str, every: int = 10):
        self.desc = desc
        self.every = every
        self.bar = None

    def before_train(self, trainer: Trainer) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=trainer.max_iter, initial=trainer.iter, desc=self.desc,
                        unit="it", dynamic_ncols=True)  # fmt: skip

    def after_step(self, trainer: Trainer) -> None:
        if trainer.iter % self.every == 0:
            total = sum(trainer.losses().values())
            lr = trainer.optimizer.param_groups[0]["lr"]
            self.bar.set_postfix(loss=f"{total:.3f}", lr=f"{lr:.2e}", epoch=trainer.epoch)
        self.bar.update(1)

    def after_train(self, trainer: Trainer) -> None:
        self.bar.close()


class PeriodicCheckpointer(Hook):
    """Save the resumable training state to `directory` every `every` iterations (0: at the
    end of every epoch).

    At an epoch's end it saves after the epoch hooks (it is registered last), so a run resumed
    from there does not skip that epoch's evaluation and its logged metrics.
    """

    main_only = True

    def __init__(self, directory: str | Path, every: int = 0):
        self.directory = Path(directory)
        self.every = every

    def _save_due(self, trainer: Trainer) -> bool:
        every = self.every or trainer.iters_per_epoch
        return trainer.iter % every == 0 and trainer.iter < trainer.max_iter

    def after_step(self, trainer: Trainer) -> None:
        if trainer.iter % trainer.iters_per_epoch and self._save_due(trainer):
            save_state(self.directory, trainer.state_dict())

    def after_epoch(self, trainer: Trainer) -> None:
        if self._save_due(trainer):
            save_state(self.directory, trainer.state_dict())


class PeriodicEvaluation(Hook):
    """Call `evaluate(model)` every `every` epochs and give its metrics to the sinks."""

    main_only = True

    def __init__(
        self,
        every: int,
        evaluate: Callable[[torch.nn.Module], dict[str, float]],
        sinks: Sequence[MetricSink],
        prefix: str = "",
    ):
        self.every = every
        self.evaluate = evaluate
        self.sinks = list(sinks)
        self.prefix = prefix
        self.history: list[tuple[int, dict[str, float]]] = []

    def after_epoch(self, trainer: Trainer) -> None:
        if (trainer.epoch + 1) % self.every:
            return
        model = trainer.model
        was_training = model.training
        metrics = self.evaluate(model.eval())
        model.train(was_training)
        self.history.append((trainer.iter, metrics))
        for sink in self.sinks:
            sink.log_metrics({f"{self.prefix}{k}": v for k, v in metrics.items()}, trainer.iter)


def default_hooks(
    desc: str, log_every: int, sinks: Sequence[MetricSink], prefix: str = ""
) -> list[Hook]:
    """What every training run wants: stop on NaN, metrics to the sinks, show progress."""
    return [
        NaNGuard(log_every),
        MetricLogger(log_every, sinks, prefix),
        ProgressBar(desc, log_every),
    ]
