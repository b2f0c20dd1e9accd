"""Evaluation: distances, rank metrics (CMC, mAP, mINP), verification (TAR@FAR),
k-reciprocal re-ranking, query expansion, DSR for partial re-id, features (and feature maps);
large-gallery (streamed, top-k) modes; VehicleID's repeated gallery draws."""

from reid_core.evaluation.distance import compute_distance, distance_blocks
from reid_core.evaluation.dsr import (
    TopKDsr,
    choose_fusion_weight,
    choose_rerank_weight,
    dsr_distance,
    dsr_rerank,
    dsr_top_k,
    fuse_distances,
)
from reid_core.evaluation.features import extract_features, extract_features_and_maps
from reid_core.evaluation.large_gallery import TopKResult, evaluate_features, evaluate_topk
from reid_core.evaluation.query_expansion import alpha_query_expansion, average_query_expansion
from reid_core.evaluation.rank import RankResult, evaluate_rank
from reid_core.evaluation.repeated import RepeatedResult, evaluate_gallery_draws
from reid_core.evaluation.rerank import re_rank, re_rank_topk
from reid_core.evaluation.verification import VerificationResult, tar_at_far

__all__ = [
    "RankResult",
    "RepeatedResult",
    "TopKDsr",
    "TopKResult",
    "VerificationResult",
    "alpha_query_expansion",
    "average_query_expansion",
    "choose_fusion_weight",
    "choose_rerank_weight",
    "compute_distance",
    "distance_blocks",
    "dsr_distance",
    "dsr_rerank",
    "dsr_top_k",
    "evaluate_gallery_draws",
    "evaluate_features",
    "evaluate_rank",
    "evaluate_topk",
    "extract_features",
    "extract_features_and_maps",
    "fuse_distances",
    "re_rank",
    "re_rank_topk",
    "tar_at_far",
]
