"""Identity classification losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.1
) -> torch.Tensor:
    """Cross-entropy with label smoothing (Szegedy et al. 2016), which curbs overconfident ids."""
    return F.cross_entropy(logits, labels, label_smoothing=smoothing)
