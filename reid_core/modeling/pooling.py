"""Global pooling of a feature map (N×C×H×W) to a vector (N×C), selectable by name.

`create_pooling(name, channels, p)` builds one from the registry `POOLINGS`:
- `avg`, `max`: plain global average / maximum;
- `gem`: generalised mean with a fixed p; `gem_learnable`: the same with p learned;
- `attention`: a softmax over positions from a 1×1 convolution weights the average;
- `clipped_avg`: average clipped to [0, 1] (FastReID's bounded variant);
- `avg_max`: average plus maximum.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from reid_core.registry import Registry


class GeneralizedMeanPooling(nn.Module):
    """GeM (Radenović et al. 2018): (mean x^p)^(1/p); p=1 is average, p→∞ approaches max.

    With `learnable`, p is a parameter trained with the network (used as max(p, 1)).
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learnable: bool = False):
        super().__init__()
        # a fixed p stays a plain number, out of the state dict (checkpoints stay compatible)
        self.p: float | nn.Parameter = nn.Parameter(torch.tensor(float(p))) if learnable else p
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p.clamp(min=1.0) if isinstance(self.p, nn.Parameter) else self.p
        return x.clamp(min=self.eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


class AveragePooling(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


class MaxPooling(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_max_pool2d(x, 1).flatten(1)


class ClippedAveragePooling(nn.Module):
    """Average clipped to [0, 1], which bounds each feature whatever the activations' scale."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, 1).flatten(1).clamp(0.0, 1.0)


class AverageMaxPooling(nn.Module):
    """Average plus maximum: the mean's context with the strongest local response."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (F.adaptive_avg_pool2d(x, 1) + F.adaptive_max_pool2d(x, 1)).flatten(1)


class AttentionPooling(nn.Module):
    """A 1×1 convolution scores every position; the softmax of the scores over positions
    weights the features, so the network learns where to look (uniform weights at init)."""

    def __init__(self, channels: int):
        super().__init__()
        self.score = nn.Conv2d(channels, 1, kernel_size=1)
        nn.init.zeros_(self.score.weight)
        nn.init.zeros_(self.score.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.score(x).flatten(2).softmax(-1)  # N×1×HW
        return (x.flatten(2) * weights).sum(-1)


POOLINGS: Registry[Callable[[int, float], nn.Module]] = Registry("pooling")
"""Pooling name -> builder(channels of the feature map, GeM p)."""


@POOLINGS.register("avg")
def _avg(channels: int, p: float) -> nn.Module:
    return AveragePooling()


@POOLINGS.register("max")
def _max(channels: int, p: float) -> nn.Module:
    return MaxPooling()


@POOLINGS.register("gem")
def _gem(channels: int, p: float) -> nn.Module:
    return GeneralizedMeanPooling(p)


@POOLINGS.register("gem_learnable")
def _gem_learnable(channels: int, p: float) -> nn.Module:
    return GeneralizedMeanPooling(p, learnable=True)


@POOLINGS.register("attention")
def _attention(channels: int, p: float) -> nn.Module:
    return AttentionPooling(channels)


@POOLINGS.register("clipped_avg")
def _clipped_avg(channels: int, p: float) -> nn.Module:
    return ClippedAveragePooling()


@POOLINGS.register("avg_max")
def _avg_max(channels: int, p: float) -> nn.Module:
    return AverageMaxPooling()


def create_pooling(name: str, channels: int, p: float = 3.0) -> nn.Module:
    """The pooling layer registered as `name` for a feature map with `channels` channels."""
    return POOLINGS.lookup(name)(channels, p)
