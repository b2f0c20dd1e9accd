"""Focal loss (Lin et al. 2017) on identity logits: CE that down-weights easy samples."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def focal_loss(
    logits: torch.Tensor, labels: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Mean of `−α·(1 − p_t)^γ·log p_t` over the batch (softmax p_t of the true class).

    γ = 0 gives α times the cross-entropy.
    """
    log_pt = F.log_softmax(logits.float(), dim=1).gather(1, labels.unsqueeze(1)).squeeze(1)
    # 1 − p_t via expm1 stays accurate for confident samples; the clamp keeps pow's gradient
    # finite at p_t = 1 when γ < 1.
    weight = (-torch.expm1(log_pt)).clamp_min(1e-12).pow(gamma)
    return -(alpha * weight * log_pt).mean()
