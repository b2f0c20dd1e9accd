"""The weighted sum of the configured re-id losses."""

from __future__ import annotations

import torch

from reid_core.modeling.losses.classification import cross_entropy
from reid_core.modeling.losses.focal import focal_loss
from reid_core.modeling.losses.pairwise import pairwise_circle, pairwise_cosface
from reid_core.modeling.losses.triplet import triplet_loss
from reid_core.modeling.model import ReidOutput
from reid_core.options import LossConfig


class ReidLoss:
    """Every loss with a nonzero weight, weighted: `{"loss_ce": ..., "loss_triplet": ...}`.

    Classification losses (CE, focal) use `out.logits` and are skipped for a model without a
    classifier; metric losses (triplet, circle, cosface) use `out.features`.
    """

    def __init__(self, config: LossConfig):
        self.config = config

    def __call__(
        self, out: ReidOutput, labels: torch.Tensor, images: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Weighted loss terms; `images` is unused (the trainer's loss signature)."""
        c = self.config
        terms: dict[str, torch.Tensor] = {}
        if out.logits is not None:
            if c.ce_weight > 0:
                terms["loss_ce"] = c.ce_weight * cross_entropy(
                    out.logits, labels, c.label_smoothing, c.label_smoothing_over
                )
            if c.focal_weight > 0:
                terms["loss_focal"] = c.focal_weight * focal_loss(
                    out.logits, labels, c.focal_alpha, c.focal_gamma
                )
        if c.triplet_weight > 0:
            terms["loss_triplet"] = c.triplet_weight * triplet_loss(
                out.features, labels, c.triplet_margin, c.triplet_mining, c.triplet_normalize
            )
        if c.circle_weight > 0:
            terms["loss_circle"] = c.circle_weight * pairwise_circle(
                out.features, labels, c.circle_margin, c.circle_gamma
            )
        if c.cosface_weight > 0:
            terms["loss_cosface"] = c.cosface_weight * pairwise_cosface(
                out.features, labels, c.cosface_margin, c.cosface_gamma
            )
        return terms
