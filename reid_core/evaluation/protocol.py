"""How an evaluation turns features into query–gallery distances, as configured."""

from __future__ import annotations

import numpy as np
import torch

from reid_core.config import EvaluateConfig
from reid_core.evaluation.distance import compute_distance
from reid_core.evaluation.query_expansion import alpha_query_expansion
from reid_core.evaluation.rerank import re_rank


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
