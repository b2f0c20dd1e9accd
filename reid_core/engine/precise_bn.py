"""Precise BN (Wu & Johnson 2021): replace BN running statistics by exact population ones.

The running averages mix statistics of weights from many iterations ago; after training,
recomputing them with the final weights over many batches gives features whose normalisation
matches the model that is actually served.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn


@torch.no_grad()
def recompute_bn_stats(
    model: nn.Module, batches: Iterable[torch.Tensor], forward: Callable[[torch.Tensor], object]
) -> int:
    """Run `forward` over `batches` in train mode with cumulative BN averaging; return the
    number of batches used. Only BN statistics change: no parameter is touched."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    saved = [(m.momentum, m.training) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: the mean over all batches seen
        m.train()
    used = 0
    try:
        for images in batches:
            forward(images)
            used += 1
    finally:
        for m, (momentum, training) in zip(norms, saved, strict=True):
            m.momentum = momentum
            m.train(training)
    return used
