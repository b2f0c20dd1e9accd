"""CMC, mAP and mINP under the Market-1501 protocol, exact and vectorised over query blocks.

For each query the gallery is ranked by distance (stable order for ties); items with the same
pid and the same camera as the query are removed; a query without any remaining positive is
skipped and not counted in `num_valid`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RankResult:
    cmc: np.ndarray  # (max_rank,) fraction of valid queries with a positive within rank k
    mAP: float
    mINP: float
    all_ap: np.ndarray  # per valid query
    all_inp: np.ndarray  # per valid query
    num_valid: int

    def as_metrics(self) -> dict[str, float]:
        """Flat metric names as the pipeline logs them (fractions 0–1)."""
        out = {"mAP": self.mAP, "mINP": self.mINP, "num_valid_queries": float(self.num_valid)}
        for k in (1, 5, 10):
            if k <= len(self.cmc):
                out[f"rank{k}"] = float(self.cmc[k - 1])
        return out


def evaluate_rank(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    max_rank: int = 50,
    block: int = 256,
) -> RankResult:
    """Exact CMC@1..max_rank, mAP and mINP; memory bounded by `block` query rows at a time."""
    distmat = np.asarray(distmat)
    num_q, num_g = distmat.shape
    if len(q_pids) != num_q or len(q_camids) != num_q:
        raise ValueError(f"{num_q} query rows but {len(q_pids)} pids / {len(q_camids)} camids")
    if len(g_pids) != num_g or len(g_camids) != num_g:
        raise ValueError(f"{num_g} gallery columns but {len(g_pids)} pids / {len(g_camids)} camids")
    max_rank = min(max_rank, num_g)
    g_pids, g_camids = np.asarray(g_pids), np.asarray(g_camids)
    hits = np.zeros(max_rank, dtype=np.int64)
    aps, inps = [], []
    for start in range(0, num_q, block):
        stop = min(start + block, num_q)
        order = np.argsort(distmat[start:stop], axis=1, kind="stable")
        qp = np.asarray(q_pids[start:stop])[:, None]
        qc = np.asarray(q_camids[start:stop])[:, None]
        same_pid = g_pids[order] == qp
        keep = ~(same_pid & (g_camids[order] == qc))
        pos = same_pid & keep
        npos = pos.sum(1)
        valid = npos > 0
        if not valid.any():
            continue
        pos, keep, npos = pos[valid], keep[valid], npos[valid]
        kept_rank = np.cumsum(keep, axis=1) - 1  # 0-based rank among kept items
        first = kept_rank[np.arange(len(pos)), pos.argmax(1)]
        last = kept_rank[np.arange(len(pos)), num_g - 1 - pos[:, ::-1].argmax(1)]
        hits += (first[:, None] < np.arange(1, max_rank + 1)[None, :]).sum(0)
        precision = np.cumsum(pos, axis=1) / np.maximum(kept_rank + 1, 1)  # removed: masked
        aps.append(np.where(pos, precision, 0.0).sum(1) / npos)
        inps.append(npos / (last + 1))
    if not aps:
        raise ValueError("no query has a positive in the gallery: evaluation is undefined")
    all_ap, all_inp = np.concatenate(aps), np.concatenate(inps)
    num_valid = len(all_ap)
    return RankResult(
        cmc=hits / num_valid,
        mAP=float(all_ap.mean()),
        mINP=float(all_inp.mean()),
        all_ap=all_ap,
        all_inp=all_inp,
        num_valid=num_valid,
    )
