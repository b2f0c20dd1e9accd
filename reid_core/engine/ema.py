"""Exponential moving average of a model's weights (Polyak averaging)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEMA:
    """Keeps `shadow`, a copy of `model` whose floating-point parameters and buffers follow
    `decay · shadow + (1 − decay) · model` after every update; other buffers are copied.

    The average usually generalises better than the last iterate at no training cost.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay}")
        self.decay = decay
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_floats, model_floats = [], []
        for ema_t, t in zip(_tensors(self.shadow), _tensors(model), strict=True):
            if t.dtype.is_floating_point:
                ema_floats.append(ema_t)
                model_floats.append(t.detach())
            else:
                ema_t.copy_(t)
        torch._foreach_lerp_(ema_floats, model_floats, 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.shadow.load_state_dict(state)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite `model`'s weights and buffers with the averaged ones."""
        for t, ema_t in zip(_tensors(model), _tensors(self.shadow), strict=True):
            t.copy_(ema_t)


def _tensors(model: nn.Module) -> list[torch.Tensor]:
    return [*model.parameters(), *model.buffers()]
