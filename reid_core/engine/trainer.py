"""The training loop: P×K batches → batched augmentation → forward → losses → step.

Everything around the step (freezing, EMA, logging, checkpoints, evaluation, precise BN) is a
hook. The loop itself only knows how to take one step and how to save and restore itself, so
that a run killed at any checkpoint and resumed ends with the uninterrupted run's weights.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reid_core.data.samplers import create_sampler
from reid_core.data.splits import Split, contiguous_labels
from reid_core.engine import distributed
from reid_core.engine.augment import BatchAugment
from reid_core.engine.distributed import SINGLE_PROCESS, DistributedContext
from reid_core.engine.hooks import EMAHook, FreezeBackbone, Hook, PeriodicCheckpointer, PreciseBN
from reid_core.engine.solver import build_optimizer, build_scheduler, clip_gradients
from reid_core.engine.training_state import load_state, rng_state, set_rng_state
from reid_core.modeling.model import ReidModel, ReidOutput
from reid_core.options import AugmentConfig, SolverConfig

log = logging.getLogger(__name__)

# (model output, labels, augmented images) -> named, already weighted loss terms. A loss that
# is an nn.Module may hold parameters (trained with the model) and state (saved for resume).
LossFn = Callable[[ReidOutput, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainData:
    """A labelled training set in host memory: uint8 N×3×H×W images, ids and cameras."""

    images: torch.Tensor
    labels: np.ndarray
    camids: np.ndarray | None = None

    def __post_init__(self) -> None:
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        if self.camids is not None and len(self.camids) != len(self.labels):
            raise ValueError(f"{len(self.camids)} camera ids but {len(self.labels)} labels")

    @classmethod
    def from_split(cls, split: Split) -> TrainData:
        """A decoded split, its ids made classifier labels 0..C-1."""
        return cls(split.images, contiguous_labels(split.pids), split.camids)


class Trainer:
    """Trains `model` on `data` as `solver` says. Hooks may read `epoch`, `iter` (steps done),
    `max_iter`, `iters_per_epoch`, `model`, `optimizer` and `losses()`."""

    def __init__(
        self,
        model: ReidModel,
        data: TrainData,
        loss_fn: LossFn,
        solver: SolverConfig,
        augment: AugmentConfig,
        hooks: Sequence[Hook] = (),
        context: DistributedContext = SINGLE_PROCESS,
    ):
        self.model = model
        self.data = data
        self.loss_fn = loss_fn
        self.loss_module = loss_fn if isinstance(loss_fn, torch.nn.Module) else None
        self.solver = solver
        self.context = context
        self.device = next(model.parameters()).device
        self.labels = torch.as_tensor(data.labels, dtype=torch.long)
        self.sampler = create_sampler(
            solver, data.labels, data.camids, context.rank, context.world_size
        )
        if len(self.sampler) == 0:
            raise ValueError("too few identities for one batch")
        self.iters_per_epoch = len(self.sampler)
        if solver.epoch_length == "images":
            global_batch = self.sampler.p * self.sampler.k
            self.iters_per_epoch = max(1, len(data.labels) // global_batch)
        self.max_iter = solver.epochs * self.iters_per_epoch
        if context.enabled:
            distributed.convert_batch_norms(model, self.device)
        if solver.channels_last:
            model.to(memory_format=torch.channels_last)
        if self.loss_module is not None:
            self.loss_module.to(self.device)
        self.optimizer = build_optimizer(model, solver, self.loss_module)
        self.scheduler = build_scheduler(self.optimizer, solver, self.iters_per_epoch)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=solver.amp == "fp16")
        height, width = data.images.shape[-2:]
        self.augment = BatchAugment(augment, height, width)
        self.module = self._wrap(model)
        builtin: list[Hook] = []
        if solver.freeze_iters > 0:
            builtin.append(FreezeBackbone(solver.freeze_iters))
        if solver.ema_decay > 0:
            builtin.append(EMAHook(solver.ema_decay))
        if solver.precise_bn_iters > 0:
            builtin.append(PreciseBN(solver.precise_bn_iters))
        self.hooks = [h for h in [*builtin, *hooks] if context.is_main or not h.main_only]
        self.epoch = 0
        self.iter = 0
        self._losses: dict[str, torch.Tensor] = {}

    def _wrap(self, model: ReidModel) -> torch.nn.Module:
        module: torch.nn.Module = model
        if self.context.enabled:
            module = torch.nn.parallel.DistributedDataParallel(
                model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.solver.freeze_iters > 0,
            )
        if self.solver.compile:
            module = torch.compile(module)
        return module

    # ---------------------------------------------------------------- the loop

    def train(self) -> ReidModel:
        self.model.train()
        if self.loss_module is not None:
            self.loss_module.train()
        for hook in self.hooks:
            hook.before_train(self)
        batches = self.sampler.batches(self.iter)
        while self.iter < self.max_iter:
            self.epoch = self.iter // self.iters_per_epoch
            for hook in self.hooks:
                hook.before_step(self)
            self.step(torch.from_numpy(next(batches)))
            for hook in self.hooks:
                hook.after_step(self)
            if self.iter % self.iters_per_epoch == 0:
                for hook in self.hooks:
                    hook.after_epoch(self)
        self.model.eval()
        if self.loss_module is not None:
            self.loss_module.eval()
        for hook in self.hooks:
            hook.after_train(self)
        if self.context.enabled:
            distributed.restore_batch_norms(self.model)
        return self.model.eval()

    def _batch_images(self, index: torch.Tensor) -> torch.Tensor:
        """The batch's images on the device, augmented, in the configured memory format."""
        images = self.augment(self.data.images[index].to(self.device, non_blocking=True))
        if self.solver.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def step(self, index: torch.Tensor) -> None:
        images = self._batch_images(index)
        labels = self.labels[index].to(self.device, non_blocking=True)
        with self._autocast():
            out = self.module(images, labels)
        out = _map_output(out, torch.Tensor.float)
        if self.context.enabled:
            out = _map_output(out, distributed.gather_rows)
            labels = distributed.gather_rows(labels)
            images = distributed.gather_rows(images)
        terms = self.loss_fn(out, labels, images)
        if not terms:
            raise ValueError("every loss weight is 0: enable at least one loss")
        loss = torch.stack(list(terms.values())).sum()
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.solver.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)
            clip_gradients(self._trained_parameters(), self.solver)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.iter += 1
        self._losses = {k: v.detach() for k, v in terms.items()}

    def _trained_parameters(self) -> list[torch.nn.Parameter]:
        extra = [] if self.loss_module is None else list(self.loss_module.parameters())
        return [*self.model.parameters(), *extra]

    def _autocast(self) -> torch.autocast:
        amp = self.solver.amp
        return torch.autocast(self.device.type, dtype=AMP_DTYPES.get(amp), enabled=amp != "off")

    def losses(self) -> dict[str, float]:
        """The last step's loss terms as numbers (synchronises with the device)."""
        return {k: float(v) for k, v in self._losses.items()}

    def forward_images(self, images: torch.Tensor) -> ReidOutput:
        """One training-mode forward pass without gradients (precise BN)."""
        with torch.no_grad(), self._autocast():
            return self.model(images)

    def precise_bn_batches(self, count: int) -> Iterator[torch.Tensor]:
        """`count` augmented training batches, continuing the sampler past the last step."""
        batches = self.sampler.batches(self.max_iter)
        for _ in range(count):
            yield self._batch_images(torch.from_numpy(next(batches)))

    # ---------------------------------------------------------------- resume

    def state_dict(self) -> dict[str, Any]:
        """Everything an exact resume needs, as tensors and plain containers."""
        hooks = {h.name: h.state_dict() for h in self.hooks}
        return {
            "iter": self.iter,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(self.device),
            "hooks": {k: v for k, v in hooks.items() if v is not None},
            "loss": {} if self.loss_module is None else self.loss_module.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"], self.device)
        if self.loss_module is not None:
            self.loss_module.load_state_dict(state["loss"])
        for hook in self.hooks:
            if hook.name in state["hooks"]:
                hook.load_state_dict(state["hooks"][hook.name])
        self.iter = int(state["iter"])

    def resume_from(self, directory: str | Path) -> bool:
        """Continue from the state saved in `directory`, if any; True when resumed."""
        state = load_state(directory)
        if state is None:
            return False
        self.load_state_dict(state)
        return True


def _map_output(out: ReidOutput, fn: Callable[[torch.Tensor], torch.Tensor]) -> ReidOutput:
    return ReidOutput(*(None if t is None else fn(t) for t in (out.features, out.neck, out.logits)))


def fit(
    model: ReidModel,
    data: TrainData,
    solver: SolverConfig,
    augment: AugmentConfig,
    loss_fn: LossFn,
    hooks: Sequence[Hook] = (),
    *,
    state_dir: str | Path | None = None,
    context: DistributedContext = SINGLE_PROCESS,
) -> ReidModel:
    """Train with the configured sampler, optimizer, schedule and augmentation (seeded).

    With `state_dir`, the training state is saved there every `solver.checkpoint_every`
    iterations (default: every epoch) and a saved state is resumed from. Runs where the
    model's parameters are; images stay in host memory, one batch moves at a time.
    """
    torch.manual_seed(solver.seed + context.rank)  # ranks draw different augmentations
    extra = list(hooks)
    if state_dir is not None:
        extra.append(PeriodicCheckpointer(state_dir, solver.checkpoint_every))
    trainer = Trainer(model, data, loss_fn, solver, augment, extra, context)
    if state_dir is not None and trainer.resume_from(state_dir):
        log.info("resuming from iteration %d of %d (%s)", trainer.iter, trainer.max_iter, state_dir)
    return trainer.train()
