"""Evaluation when the query × gallery matrix is too large to hold.

`evaluate_features` gives exactly `evaluate_rank`'s result from features, ranking query
blocks as their distances are computed. `evaluate_topk` scores ranked top-k lists (such as
`re_rank_topk`'s), with metrics over the truncated list and labelled so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from reid_core.evaluation.distance import distance_blocks
from reid_core.evaluation.inputs import check_distances, check_labels, pid_index
from reid_core.evaluation.rank import RankResult, cmc_metrics, rank_blocks


def evaluate_features(
    q_feats: np.ndarray | torch.Tensor,
    g_feats: np.ndarray | torch.Tensor,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    metric: Literal["cosine", "euclidean"] = "cosine",
    max_rank: int = 50,
) -> RankResult:
    """`evaluate_rank(compute_distance(q_feats, g_feats, metric), ...)` without the matrix:
    memory is one block of query rows (distances on the features' device)."""
    num_q, num_g = len(q_feats), len(g_feats)
    if num_q == 0 or num_g == 0:
        raise ValueError(f"need queries and gallery items, got {num_q} and {num_g}")
    blocks = (
        (rows, check_distances(block)) for rows, block in distance_blocks(q_feats, g_feats, metric)
    )
    labels = (q_pids, g_pids, q_camids, g_camids)
    return rank_blocks(blocks, num_q, num_g, *labels, max_rank)


@dataclass(frozen=True)
class TopKResult:
    """Metrics over each query's first `k` retrieved gallery items only.

    Junk (same pid, same camera) is removed from the lists. `cmc[r-1]`: share of valid queries
    with a positive within the first r kept items. `mAP_at_k`: AP summed over the positives
    found in the list, divided by all of the query's positives in the gallery — a lower bound
    of the full mAP, equal to it for queries whose positives all lie in the list
    (`complete`: their share). Valid queries are those with a positive in the gallery.
    """

    k: int
    cmc: np.ndarray
    mAP_at_k: float
    all_ap_at_k: np.ndarray
    complete: float
    num_valid: int

    def as_metrics(self, prefix: str = "") -> dict[str, float]:
        """Flat names that say the metrics are truncated at k, each after `prefix` (as
        `RankResult.as_metrics`)."""
        out = {
            f"mAP_at_{self.k}": self.mAP_at_k,
            f"complete_at_{self.k}": self.complete,
            "num_valid_queries": float(self.num_valid),
        }
        return {f"{prefix}{name}": value for name, value in (out | cmc_metrics(self.cmc)).items()}


def evaluate_topk(
    indices: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
) -> TopKResult:
    """Score ranked lists of gallery indices (num_q × k, nearest first) against the labels."""
    indices = np.asarray(indices)
    if indices.ndim != 2 or 0 in indices.shape:
        raise ValueError(f"indices must be a non-empty queries × k array, got {indices.shape}")
    num_q, k = indices.shape
    q_pids, q_camids = check_labels("query", num_q, q_pids, q_camids)
    g_pids, g_camids = check_labels("gallery", len(g_pids), g_pids, g_camids)
    if indices.min() < 0 or indices.max() >= len(g_pids):
        raise ValueError(f"indices must lie in [0, {len(g_pids)}): the gallery's items")
    same_pid = g_pids[indices] == q_pids[:, None]
    junk = same_pid & (g_camids[indices] == q_camids[:, None])
    hit = same_pid & ~junk
    positives = _positives_per_query(q_pids, q_camids, g_pids, g_camids)
    valid = positives > 0
    if not valid.any():
        raise ValueError("no query has a positive in the gallery: evaluation is undefined")
    kept_rank = np.cumsum(~junk, 1)  # 1-based rank among kept items (meaningful where kept)
    hits_so_far = np.cumsum(hit, 1)
    precision = np.where(hit, hits_so_far / np.maximum(kept_rank, 1), 0.0)
    all_ap = (precision.sum(1) / np.maximum(positives, 1))[valid]
    first_hit = np.where(
        hit.any(1), np.take_along_axis(kept_rank, hit.argmax(1)[:, None], 1)[:, 0], k + 1
    )
    cmc = (first_hit[valid, None] <= np.arange(1, k + 1)[None, :]).mean(0)
    complete = float((hits_so_far[:, -1] == positives)[valid].mean())
    return TopKResult(k, cmc, float(all_ap.mean()), all_ap, complete, int(valid.sum()))


def _positives_per_query(q_pids, q_camids, g_pids, g_camids) -> np.ndarray:
    """How many gallery items share each query's pid but not its camera."""
    index = pid_index(q_pids, g_pids)
    # shift the camids to 0.. (check_labels recodes unknown ones below 0): no key collides
    low = min(q_camids.min(), g_camids.min())
    q_cams, g_cams = q_camids - low, g_camids - low
    cams = int(max(q_cams.max(), g_cams.max())) + 1
    keys, counts = np.unique(index.g_ids * cams + g_cams, return_counts=True)
    q_keys = index.q_ids * cams + q_cams
    at = np.minimum(np.searchsorted(keys, q_keys), len(keys) - 1)
    same_camera = np.where(keys[at] == q_keys, counts[at], 0)
    return np.diff(index.start)[index.q_ids] - same_camera
