"""Pair-based losses on the cosine similarities of a batch's L2-normalised features.

Both follow the unified form of Sun et al. 2020 for each anchor,
`softplus(logsumexp_n(logit_n) + logsumexp_p(logit_p)) = log(1 + Σ_n Σ_p exp(logit_n + logit_p))`,
over its positives (same id, the anchor itself excluded) and negatives. The logsumexp form
never exponentiates γ·s directly, so γ = 128 cannot overflow.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reid_core.modeling.losses.triplet import mean_over, pair_masks


def _masked_logsumexp(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Row-wise logsumexp over the entries in `mask`; 0 for rows without any (left out later)."""
    has_any = mask.any(1, keepdim=True)
    # all -inf rows would give -inf with a NaN gradient
    logits = torch.where(mask, x, float("-inf")).where(has_any, 0.0)
    return torch.logsumexp(logits, dim=1)


def _unified_pair_loss(
    logit_p: torch.Tensor, logit_n: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    pos, neg, valid = pair_masks(labels)
    per_anchor = F.softplus(_masked_logsumexp(logit_p, pos) + _masked_logsumexp(logit_n, neg))
    return mean_over(per_anchor, valid)


def cosine_similarity_matrix(features: torch.Tensor) -> torch.Tensor:
    """N×N cosine similarities, computed in float32 (γ·s is sensitive to rounding)."""
    with torch.autocast(features.device.type, enabled=False):
        x = F.normalize(features.float(), dim=1)
        return x @ x.t()


def pairwise_circle(
    features: torch.Tensor, labels: torch.Tensor, margin: float = 0.25, gamma: float = 128.0
) -> torch.Tensor:
    """Circle loss (Sun et al. 2020) on pairs, averaged over anchors having both pair kinds.

    logit_p = −γ·α_p·(s_p − Δp), logit_n = γ·α_n·(s_n − Δn), with self-paced weights
    α_p = relu(1 + m − s_p), α_n = relu(s_n + m) held constant (detached), Δp = 1 − m, Δn = m.
    """
    sim = cosine_similarity_matrix(features)
    s = sim.detach()
    logit_p = -gamma * F.relu(1.0 + margin - s) * (sim - (1.0 - margin))
    logit_n = gamma * F.relu(s + margin) * (sim - margin)
    return _unified_pair_loss(logit_p, logit_n, labels)


def pairwise_cosface(
    features: torch.Tensor, labels: torch.Tensor, margin: float = 0.25, gamma: float = 128.0
) -> torch.Tensor:
    """Pairwise CosFace: `log(1 + Σ_n Σ_p exp(γ(s_n − s_p + m)))` per anchor, averaged.

    The additive cosine margin of CosFace (Wang et al. 2018) in the pair form of Sun et al.:
    logit_p = −γ·s_p, logit_n = γ·(s_n + m).
    """
    sim = cosine_similarity_matrix(features)
    return _unified_pair_loss(-gamma * sim, gamma * (sim + margin), labels)
