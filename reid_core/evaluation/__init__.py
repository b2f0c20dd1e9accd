"""Evaluation: distances, rank metrics (CMC, mAP, mINP), verification (TAR@FAR),
k-reciprocal re-ranking, features."""

from reid_core.evaluation.distance import compute_distance
from reid_core.evaluation.features import extract_features
from reid_core.evaluation.query_expansion import alpha_query_expansion, average_query_expansion
from reid_core.evaluation.rank import RankResult, evaluate_rank
from reid_core.evaluation.rerank import re_rank
from reid_core.evaluation.verification import VerificationResult, tar_at_far

__all__ = [
    "RankResult",
    "VerificationResult",
    "alpha_query_expansion",
    "average_query_expansion",
    "compute_distance",
    "evaluate_rank",
    "extract_features",
    "re_rank",
    "tar_at_far",
]
