"""Optimizers and the learning-rate schedule (linear warmup, then cosine decay)."""

from __future__ import annotations

import math

import torch
from torch import nn

from reid_core.config import SolverConfig


def build_optimizer(model: nn.Module, config: SolverConfig) -> torch.optim.Optimizer:
    """Weight decay on weights only: norms and biases are excluded, as is standard."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    return torch.optim.Adam(groups, lr=config.lr)


def lr_factor(step: int, total: int, warmup: int, min_factor: float) -> float:
    """Multiplier of the base LR at iteration `step` of `total`."""
    if warmup > 0 and step < warmup:
        return 0.1 + 0.9 * step / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: SolverConfig, iters_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    total = config.epochs * iters_per_epoch
    warmup = round(config.warmup_epochs * iters_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total, warmup, config.min_lr_factor)
    )
