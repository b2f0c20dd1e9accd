"""Triplet loss on the batch's Euclidean distances, with batch-hard or softmax-weighted mining.

Batch-hard: Hermans et al. 2017. Weighted: the weighted regularised triplet of AGW (Ye et al.
2021), where every positive and negative contributes with a softmax weight of its distance.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F


def pairwise_euclidean(x: torch.Tensor) -> torch.Tensor:
    """N×N Euclidean distances; the clamp keeps sqrt's gradient finite on the diagonal."""
    sq = x.pow(2).sum(1, keepdim=True)
    d2 = sq + sq.t() - 2.0 * x @ x.t()
    return d2.clamp(min=1e-12).sqrt()


def pair_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(positives: same id but not the anchor itself, negatives, anchors having both)."""
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    pos, neg = same & ~eye, ~same
    return pos, neg, pos.any(1) & neg.any(1)


def masked_softmax(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Row-wise softmax over the entries in `mask`; rows without any give all zeros."""
    # An all-masked row would be softmax(all -inf) = NaN, whose gradient poisons the batch.
    has_any = mask.any(1, keepdim=True)
    logits = torch.where(mask, x, float("-inf")).where(has_any, 0.0)
    return torch.softmax(logits, dim=1) * has_any


def mean_over(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of `values` where `valid`; 0 (still part of the graph) when none is."""
    total = torch.where(valid, values, 0.0).sum()
    return total / valid.sum().clamp(min=1)


def triplet_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    margin: float = 0.3,
    mining: Literal["hard", "weighted"] = "hard",
    normalize: bool = False,
) -> torch.Tensor:
    """Mean over anchors of `relu(d_ap − d_an + margin)`, or `softplus(d_ap − d_an)` if margin 0.

    `d_ap`/`d_an` are the hardest positive/negative distances ("hard"), or their softmax-
    weighted averages with weights softmax(d) over positives and softmax(−d) over negatives
    ("weighted"; AGW's weighted regularised triplet is "weighted" with margin 0). Anchors
    without a positive or a negative in the batch are left out.
    """
    if normalize:
        features = F.normalize(features, dim=1)
    dist = pairwise_euclidean(features)
    pos, neg, valid = pair_masks(labels)
    if mining == "hard":
        d_ap = torch.where(pos, dist, float("-inf")).amax(1)
        d_an = torch.where(neg, dist, float("inf")).amin(1)
    elif mining == "weighted":
        d_ap = (masked_softmax(dist, pos) * dist).sum(1)
        d_an = (masked_softmax(-dist, neg) * dist).sum(1)
    else:
        raise ValueError(f"unknown triplet mining '{mining}'; known: hard, weighted")
    # Anchors missing a pair have ±inf here; zero them before the difference.
    gap = torch.where(valid, d_ap, 0.0) - torch.where(valid, d_an, 0.0)
    loss = F.softplus(gap) if margin == 0 else F.relu(gap + margin)
    return mean_over(loss, valid)


def batch_hard_triplet(
    features: torch.Tensor, labels: torch.Tensor, margin: float = 0.3
) -> torch.Tensor:
    """Batch-hard triplet: each anchor's hardest positive and hardest negative in the batch."""
    return triplet_loss(features, labels, margin, mining="hard")
