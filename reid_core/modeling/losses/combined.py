"""The weighted sum of the configured re-id losses."""

from __future__ import annotations

import torch

from reid_core.config import LossConfig
from reid_core.modeling.losses.classification import cross_entropy
from reid_core.modeling.losses.triplet import batch_hard_triplet
from reid_core.modeling.model import ReidOutput


class ReidLoss:
    """CE (with label smoothing) on the neck's logits + batch-hard triplet on pooled features."""

    def __init__(self, config: LossConfig):
        self.config = config

    def __call__(self, out: ReidOutput, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        c = self.config
        terms: dict[str, torch.Tensor] = {}
        if c.ce_weight > 0 and out.logits is not None:
            terms["loss_ce"] = c.ce_weight * cross_entropy(out.logits, labels, c.label_smoothing)
        if c.triplet_weight > 0:
            terms["loss_triplet"] = c.triplet_weight * batch_hard_triplet(
                out.features, labels, c.triplet_margin
            )
        return terms
