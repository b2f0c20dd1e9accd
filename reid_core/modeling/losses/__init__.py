"""Re-id losses: identity classification and metric learning, weighted and combined."""

from reid_core.modeling.losses.classification import cross_entropy
from reid_core.modeling.losses.combined import LOSSES, ReidLoss
from reid_core.modeling.losses.focal import focal_loss
from reid_core.modeling.losses.pairwise import pairwise_circle, pairwise_cosface
from reid_core.modeling.losses.triplet import batch_hard_triplet, triplet_loss

__all__ = [
    "LOSSES",
    "ReidLoss",
    "batch_hard_triplet",
    "cross_entropy",
    "focal_loss",
    "pairwise_circle",
    "pairwise_cosface",
    "triplet_loss",
]
