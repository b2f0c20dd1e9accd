"""How an evaluation turns features into query–gallery distances, as configured, and the
distances into one result whose `as_metrics` names the metrics for every caller."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from reid_core.data.splits import Split
from reid_core.evaluation.distance import compute_distance
from reid_core.evaluation.features import extract_features
from reid_core.evaluation.query_expansion import alpha_query_expansion
from reid_core.evaluation.rank import RankResult, evaluate_rank
from reid_core.evaluation.rerank import re_rank
from reid_core.evaluation.verification import VerificationResult, tar_at_far
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


@dataclass(frozen=True)
class EvaluationResult:
    """What one evaluation measured: rank metrics, and verification when it was asked for.

    `as_metrics(prefix)` names them; every caller (the evaluate stage, the evaluation during
    training and adaptation) takes its names from it, with its own prefix.
    """

    rank: RankResult
    verification: VerificationResult | None = None

    def as_metrics(self, prefix: str = "") -> dict[str, float]:
        """`mAP`, `mINP`, `num_valid_queries`, `rank1`/`rank5`/`rank10` (those the CMC
        reaches) and, with verification, `tar_at_far_<far>`: each after `prefix`."""
        out = self.rank.as_metrics(prefix)
        if self.verification is not None:
            out |= self.verification.as_metrics(prefix)
        return out


class Labelled(Protocol):
    """Anything with one pid and one camera id per row: a decoded Split, SplitFeatures."""

    pids: np.ndarray
    camids: np.ndarray


@dataclass(frozen=True)
class DsrResult:
    """An evaluation re-ranked by DSR: rank metrics of the fused ranking, verification of the
    global distance (fused values only rank), and the global ranking's rank-1 and mAP as
    `global_rank1`, `global_mAP` beside them."""

    fused: RankResult
    plain: EvaluationResult  # with the global distance alone

    @property
    def rank(self) -> RankResult:
        return self.fused

    @property
    def verification(self) -> VerificationResult | None:
        return self.plain.verification

    def as_metrics(self, prefix: str = "") -> dict[str, float]:
        """`EvaluationResult.as_metrics` of the fused ranking, plus `global_rank1` and
        `global_mAP`, each after `prefix`."""
        out = EvaluationResult(self.fused, self.plain.verification).as_metrics(prefix)
        plain = self.plain.rank.as_metrics()
        return out | {f"{prefix}global_{name}": plain[name] for name in ("rank1", "mAP")}


def evaluate_distances(
    dist: np.ndarray,
    query: Labelled,
    gallery: Labelled,
    config: EvaluateConfig,
    verify: bool = False,
) -> EvaluationResult:
    """Rank metrics (CMC to `config.max_rank`, mAP, mINP) of a query × gallery distance
    matrix and, when `verify`, TAR at `config.fars`."""
    labels = (query.pids, gallery.pids, query.camids, gallery.camids)
    rank = evaluate_rank(dist, *labels, config.max_rank)
    return EvaluationResult(rank, tar_at_far(dist, *labels, config.fars) if verify else None)


def evaluate_splits(
    model: torch.nn.Module,
    query: Split,
    gallery: Split,
    config: EvaluateConfig,
    device: str = "cpu",
    verify: bool = False,
) -> EvaluationResult:
    """`evaluate_distances` of `model` on decoded query and gallery splits, as configured
    (evaluation during training; the evaluate stage also keeps the features and distances
    for its files and reports)."""
    q_feats = extract_features(model, query.images, config.batch_size, config.flip)
    g_feats = extract_features(model, gallery.images, config.batch_size, config.flip)
    dist = evaluation_distances(q_feats, g_feats, config, device)
    return evaluate_distances(dist, query, gallery, config, verify)
