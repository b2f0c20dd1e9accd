"""CMC, mAP and mINP under the Market-1501 protocol: exact, without sorting any row.

For each query the gallery is ranked by distance (ties in gallery order, as a stable sort
would); items with the same pid and the same camera as the query are removed; a query without
any remaining positive is skipped and not counted in `num_valid`. Only the positives' ranks
matter, and `kernels.positive_ranks` finds those in one vectorised pass per positive.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from reid_core.evaluation.inputs import check_distances, check_labels, pid_index


@dataclass(frozen=True)
class RankResult:
    cmc: np.ndarray  # (max_rank,) fraction of valid queries with a positive within rank k
    mAP: float
    mINP: float
    all_ap: np.ndarray  # per valid query
    all_inp: np.ndarray  # per valid query
    num_valid: int

    def as_metrics(self, prefix: str = "") -> dict[str, float]:
        """Flat metric names as the pipeline logs and writes them (fractions 0–1): `mAP`,
        `mINP`, `num_valid_queries`, `rank1`, `rank5`, `rank10`, each after `prefix`."""
        out = {"mAP": self.mAP, "mINP": self.mINP, "num_valid_queries": float(self.num_valid)}
        return {f"{prefix}{name}": value for name, value in (out | cmc_metrics(self.cmc)).items()}


def cmc_metrics(cmc: np.ndarray) -> dict[str, float]:
    """rank1, rank5, rank10 (those the curve reaches) from a CMC curve."""
    return {f"rank{k}": float(cmc[k - 1]) for k in (1, 5, 10) if k <= len(cmc)}


def evaluate_rank(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    max_rank: int = 50,
) -> RankResult:
    """Exact CMC@1..max_rank, mAP and mINP of a query × gallery distance matrix."""
    dist = check_distances(distmat)
    num_q, num_g = dist.shape
    labels = (q_pids, g_pids, q_camids, g_camids)
    return rank_blocks([(slice(0, num_q), dist)], num_q, num_g, *labels, max_rank)


def rank_blocks(
    blocks: Iterable[tuple[slice, np.ndarray]],
    num_q: int,
    num_g: int,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    max_rank: int,
) -> RankResult:
    """`evaluate_rank` of a matrix given as (query rows, their checked distances) blocks, so
    a caller can produce the rows as it goes instead of holding the whole matrix."""
    from reid_core.evaluation.kernels import positive_ranks

    q_pids, q_camids = check_labels("query", num_q, q_pids, q_camids)
    g_pids, g_camids = check_labels("gallery", num_g, g_pids, g_camids)
    index = pid_index(q_pids, g_pids)
    ranks = np.full((num_q, index.max_members), -1, np.int64)
    npos = np.zeros(num_q, np.int64)
    for rows, dist in blocks:
        ranks[rows], npos[rows] = positive_ranks(
            dist,
            index.q_ids[rows],
            q_camids[rows],
            g_camids,
            index.start,
            index.members,
            index.max_members,
        )
    return summarise_ranks(ranks, npos, min(max_rank, num_g))


def summarise_ranks(ranks: np.ndarray, npos: np.ndarray, max_rank: int) -> RankResult:
    """RankResult from each query's 0-based positive ranks (ascending, -1 padded) and counts;
    queries without a positive are skipped."""
    valid = npos > 0
    if not valid.any():
        raise ValueError("no query has a positive in the gallery: evaluation is undefined")
    ranks, npos = ranks[valid], npos[valid]
    kth = np.arange(ranks.shape[1])
    is_pos = kth[None, :] < npos[:, None]
    precision = np.divide(kth + 1.0, ranks + 1.0, out=np.zeros(ranks.shape), where=is_pos)
    all_ap = precision.sum(1) / npos
    all_inp = npos / (ranks[np.arange(len(ranks)), npos - 1] + 1.0)
    cmc = (ranks[:, :1] < np.arange(1, max_rank + 1)[None, :]).mean(0)
    return RankResult(
        cmc=cmc,
        mAP=float(all_ap.mean()),
        mINP=float(all_inp.mean()),
        all_ap=all_ap,
        all_inp=all_inp,
        num_valid=len(all_ap),
    )
