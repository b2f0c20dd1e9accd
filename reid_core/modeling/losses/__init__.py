"""Re-id losses: identity classification and metric learning, weighted and combined."""

from reid_core.modeling.losses.classification import cross_entropy
from reid_core.modeling.losses.combined import ReidLoss
from reid_core.modeling.losses.triplet import batch_hard_triplet

__all__ = ["ReidLoss", "batch_hard_triplet", "cross_entropy"]
