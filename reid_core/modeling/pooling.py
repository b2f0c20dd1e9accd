"""Global pooling of a feature map to a vector."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GeneralizedMeanPooling(nn.Module):
    """GeM (Radenović et al. 2018): (mean x^p)^(1/p); p=1 is average, p→∞ approaches max."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = p
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3))
        return pooled.pow(1.0 / self.p)


class AveragePooling(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def create_pooling(name: str, p: float = 3.0) -> nn.Module:
    if name == "gem":
        return GeneralizedMeanPooling(p)
    if name == "avg":
        return AveragePooling()
    raise ValueError(f"unknown pooling '{name}'; known: avg, gem")
