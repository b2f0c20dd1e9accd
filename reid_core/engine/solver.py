"""Optimizer parameter groups, warmup + multistep/cosine LR schedules and gradient clipping.

The schedule is a pure function of the iteration (`lr_factor`), wrapped in a `LambdaLR` that
steps once per iteration, so a resumed run reproduces an uninterrupted run's LRs exactly.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from reid_core.options import SolverConfig

# `_NormBase` is the common base of every BatchNorm / SyncBatchNorm / InstanceNorm variant
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
)


def param_groups(model: nn.Module, config: SolverConfig) -> list[dict[str, Any]]:
    """Parameter groups with per-group LR factor and weight decay, identical ones merged.

    Norm parameters (by module type), biases and scalars get `weight_decay_norm`, other weights
    `weight_decay`; biases get LR × `bias_lr_factor`, everything outside `model.backbone` LR ×
    `heads_lr_factor`; factors multiply. Frozen parameters are included too, since the trainer
    toggles `requires_grad` (e.g. a frozen backbone at the start) without rebuilding the
    optimizer. Each group's `lr` is `config.lr × lr_factor`; schedules scale that base LR.
    """
    backbone = getattr(model, "backbone", None)
    in_backbone = (
        {id(p) for p in backbone.parameters()} if isinstance(backbone, nn.Module) else None
    )
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for module in model.modules():
        is_norm = isinstance(module, NORM_TYPES)
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen:  # shared (tied) parameters belong to one group only
                continue
            seen.add(id(param))
            is_bias = name == "bias"
            factor = config.bias_lr_factor if is_bias else 1.0
            if in_backbone is not None and id(param) not in in_backbone:
                factor *= config.heads_lr_factor
            # a scalar such as GeM's learnable p is an exponent, not a weight to shrink
            no_decay = is_norm or is_bias or param.ndim == 0
            decay = config.weight_decay_norm if no_decay else config.weight_decay
            groups.setdefault((factor, decay), []).append(param)
    return [
        {"params": params, "lr": config.lr * factor, "lr_factor": factor, "weight_decay": decay}
        for (factor, decay), params in groups.items()
    ]


def build_optimizer(
    model: nn.Module, config: SolverConfig, extra: nn.Module | None = None
) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov), Adam (L2 decay) or AdamW (decoupled decay).

    `extra` holds parameters trained alongside the model but not part of it, such as a
    distillation loss's connectors; they get groups of their own, as heads do.

    Adam/AdamW use torch's fused kernels where the parameters' device supports them. SGD keeps
    torch's default (foreach on accelerators): fused SGD fails once a parameter first gets a
    gradient after the first step, which is what unfreezing the backbone does.
    """
    groups = param_groups(model, config)
    if extra is not None:
        groups += param_groups(extra, config)
    common: dict[str, Any] = {"lr": config.lr, "weight_decay": config.weight_decay}
    if config.optimizer == "sgd":
        nesterov = config.nesterov and config.momentum > 0
        return torch.optim.SGD(groups, **common, momentum=config.momentum, nesterov=nesterov)
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    try:
        return cls(groups, **common, fused=True)
    except RuntimeError:  # a device or dtype without fused kernels
        return cls(groups, **common)


def warmup_iters(config: SolverConfig, iters_per_epoch: int) -> int:
    """Number of warmup iterations: `warmup_epochs` × iterations per epoch, rounded."""
    return round(config.warmup_epochs * iters_per_epoch)


def lr_factor(iteration: int, config: SolverConfig, iters_per_epoch: int) -> float:
    """Multiplier of each group's base LR at 0-based `iteration` (the LR that step uses).

    Warmup (linear / constant / exp from `warmup_factor` to 1) multiplies the main schedule:
    multistep (× `gamma` at each epoch of `steps`, counted from the start of training) or
    cosine (flat for `delay_epochs` after warmup, then down to `min_lr_factor`, reached
    exactly at the last iteration); with `schedule_clock: epochs_after_warmup`, the main
    schedule runs on FastReID's epoch clock instead (`_epoch_clock_factor`).
    """
    warmup = warmup_iters(config, iters_per_epoch)
    factor = 1.0
    if iteration < warmup:
        progress = iteration / warmup
        w = config.warmup_factor
        if config.warmup_method == "linear":
            factor = w + (1.0 - w) * progress
        elif config.warmup_method == "exp":
            factor = w ** (1.0 - progress)
        else:
            factor = w
    if config.schedule_clock == "epochs_after_warmup":
        return factor * _epoch_clock_factor(iteration, config, iters_per_epoch, warmup)
    if config.scheduler == "multistep":
        milestones = [step * iters_per_epoch for step in config.steps]
        return factor * config.gamma ** bisect.bisect_right(milestones, iteration)
    start = warmup + config.delay_epochs * iters_per_epoch
    if iteration < start:
        return factor
    last = config.epochs * iters_per_epoch - 1
    progress = min(1.0, (iteration - start) / (last - start)) if last > start else 1.0
    floor = config.min_lr_factor
    return factor * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def _epoch_clock_factor(
    iteration: int, config: SolverConfig, iters_per_epoch: int, warmup: int
) -> float:
    """The main schedule on FastReID's clock: its LRScheduler hook steps the epoch scheduler
    at the end of every epoch from the one in which warmup ends (and past `delay_epochs`), so
    at epoch E the scheduler has taken max(0, E − first) steps; its cosine spans the epochs
    after max(warmup, delay_epochs) and ends at `min_lr_factor` (FastReID's ETA_MIN_LR)."""
    warmup_epochs = math.ceil(warmup / iters_per_epoch)
    first = max(warmup_epochs, config.delay_epochs + 1) - 1
    steps = max(0, iteration // iters_per_epoch - first)
    if config.scheduler == "multistep":
        return config.gamma ** bisect.bisect_right(config.steps, steps)
    span = max(1, config.epochs - max(warmup_epochs, config.delay_epochs))
    floor = config.min_lr_factor
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * steps / span))


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: SolverConfig, iters_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration schedule of `lr_factor`; call `step()` after every optimizer step.

    The lambda is a plain function, so `state_dict()` holds only counters and base LRs
    (loadable with `torch.load(weights_only=True)`), and resuming continues exactly.
    """
    if iters_per_epoch < 1:
        raise ValueError(f"iters_per_epoch must be positive, got {iters_per_epoch}")
    config = config.model_copy(deep=True)  # later edits of the caller's config must not move the LR

    def factor(iteration: int) -> float:
        return lr_factor(iteration, config, iters_per_epoch)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def clip_gradients(parameters: Iterable[torch.Tensor], config: SolverConfig) -> torch.Tensor | None:
    """Clip gradients in place by total L2 norm or by value, as `clip_type` says.

    Returns the total gradient norm before clipping as a 0-d tensor (for logging; a tensor so
    that the device need not synchronise every step), or None when `clip_grad` is 0.
    Parameters without a gradient are skipped.
    """
    if config.clip_grad <= 0:
        return None
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return torch.zeros(())
    if config.clip_type == "norm":
        return torch.nn.utils.clip_grad_norm_(params, config.clip_grad)
    norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    torch.nn.utils.clip_grad_value_(params, config.clip_grad)
    return norm
