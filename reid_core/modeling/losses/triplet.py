"""Triplet loss with batch-hard mining (Hermans et al. 2017)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pairwise_euclidean(x: torch.Tensor) -> torch.Tensor:
    sq = x.pow(2).sum(1, keepdim=True)
    d2 = sq + sq.t() - 2.0 * x @ x.t()
    return d2.clamp(min=1e-12).sqrt()


def batch_hard_triplet(
    features: torch.Tensor, labels: torch.Tensor, margin: float = 0.3
) -> torch.Tensor:
    """For each anchor: hardest positive and hardest negative in the batch, hinge on the margin.

    A batch without any positive pair or without any negative contributes zero.
    """
    dist = pairwise_euclidean(features)
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    pos_mask = same & ~eye
    valid = pos_mask.any(1) & (~same).any(1)
    if not valid.any():
        return features.sum() * 0.0
    hardest_pos = dist.masked_fill(~pos_mask, float("-inf")).amax(1)
    hardest_neg = dist.masked_fill(same, float("inf")).amin(1)
    loss = F.relu(hardest_pos - hardest_neg + margin)
    return loss[valid].mean()
