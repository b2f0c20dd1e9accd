"""Evaluation: distances, rank metrics (CMC, mAP, mINP) and feature extraction."""

from reid_core.evaluation.distance import compute_distance
from reid_core.evaluation.features import extract_features
from reid_core.evaluation.rank import RankResult, evaluate_rank

__all__ = ["RankResult", "compute_distance", "evaluate_rank", "extract_features"]
