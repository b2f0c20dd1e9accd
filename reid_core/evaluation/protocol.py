"""How an evaluation turns features into query–gallery distances, as configured."""

from __future__ import annotations

import numpy as np
import torch

from reid_core.data.splits import Split
from reid_core.evaluation.distance import compute_distance
from reid_core.evaluation.features import extract_features
from reid_core.evaluation.query_expansion import alpha_query_expansion
from reid_core.evaluation.rank import RankResult, evaluate_rank
from reid_core.evaluation.rerank import re_rank
from reid_core.options import EvaluateConfig


def evaluation_distances(
    q_feats: np.ndarray, g_feats: np.ndarray, config: EvaluateConfig, device: str = "cpu"
) -> np.ndarray:
    """Query expansion (if any) on the queries, then the metric distance (computed on
    `device`) or its re-ranking."""
    if config.query_expansion != "none":
        alpha = 0.0 if config.query_expansion == "average" else config.qe_alpha
        q_feats = alpha_query_expansion(q_feats, g_feats, min(config.qe_k, len(g_feats)), alpha)
    if config.rerank:
        return re_rank(
            q_feats,
            g_feats,
            config.rerank_k1,
            config.rerank_k2,
            config.rerank_lambda,
            config.metric,
            config.rerank_knn,
        )
    q, g = (torch.as_tensor(f, device=device) for f in (q_feats, g_feats))
    return compute_distance(q, g, config.metric)


def evaluate_splits(
    model: torch.nn.Module,
    query: Split,
    gallery: Split,
    config: EvaluateConfig,
    device: str = "cpu",
) -> RankResult:
    """CMC/mAP/mINP of `model` on decoded query and gallery splits (evaluation during
    training; the evaluate stage adds verification, reports and saved features)."""
    q_feats = extract_features(model, query.images, config.batch_size, config.flip)
    g_feats = extract_features(model, gallery.images, config.batch_size, config.flip)
    dist = evaluation_distances(q_feats, g_feats, config, device)
    return evaluate_rank(dist, query.pids, gallery.pids, query.camids, gallery.camids,
                         config.max_rank)  # fmt: skip
