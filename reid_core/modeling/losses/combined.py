"""The weighted sum of the configured re-id losses."""

from __future__ import annotations

from collections.abc import Callable

import torch

from reid_core.modeling.losses.classification import cross_entropy
from reid_core.modeling.losses.focal import focal_loss
from reid_core.modeling.losses.pairwise import pairwise_circle, pairwise_cosface
from reid_core.modeling.losses.triplet import triplet_loss
from reid_core.modeling.model import ReidOutput
from reid_core.options import LossConfig
from reid_core.registry import Registry

LossTerm = Callable[[ReidOutput, torch.Tensor, LossConfig], torch.Tensor | None]
LOSSES: Registry[LossTerm] = Registry("loss")
"""Loss name -> term(output, labels, options), unweighted, or None where it does not apply
(a classification loss on a model without a classifier). Loss `x` is weighted by the option
`x_weight` (0: off) and reported as `loss_x`."""


@LOSSES.register("ce")
def _ce(out: ReidOutput, labels: torch.Tensor, c: LossConfig) -> torch.Tensor | None:
    if out.logits is None:
        return None
    return cross_entropy(out.logits, labels, c.label_smoothing, c.label_smoothing_over)


@LOSSES.register("focal")
def _focal(out: ReidOutput, labels: torch.Tensor, c: LossConfig) -> torch.Tensor | None:
    if out.logits is None:
        return None
    return focal_loss(out.logits, labels, c.focal_alpha, c.focal_gamma)


@LOSSES.register("triplet")
def _triplet(out: ReidOutput, labels: torch.Tensor, c: LossConfig) -> torch.Tensor:
    return triplet_loss(out.features, labels, c.triplet_margin, c.triplet_mining,
                        c.triplet_normalize)  # fmt: skip


@LOSSES.register("circle")
def _circle(out: ReidOutput, labels: torch.Tensor, c: LossConfig) -> torch.Tensor:
    return pairwise_circle(out.features, labels, c.circle_margin, c.circle_gamma)


@LOSSES.register("cosface")
def _cosface(out: ReidOutput, labels: torch.Tensor, c: LossConfig) -> torch.Tensor:
    return pairwise_cosface(out.features, labels, c.cosface_margin, c.cosface_gamma)


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
        terms: dict[str, torch.Tensor] = {}
        for name, term in LOSSES.items():
            weight = getattr(self.config, f"{name}_weight")
            if weight > 0 and (value := term(out, labels, self.config)) is not None:
                terms[f"loss_{name}"] = weight * value
        return terms
