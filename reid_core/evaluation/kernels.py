"""Compiled kernels of the evaluation suite (numba; parallel over query rows).

`positive_ranks`: a query's metrics depend only on where its positives land among the kept
gallery items. For each positive, one pass over the row counts the items ranked before it;
LLVM vectorises that count, so a query costs (number of positives) × (gallery size) cheap
compares instead of a full argsort. Ties are ordered by gallery index, as a stable sort would.

`negative_histogram` / `negatives_in_bins`: exact order statistics of the negative pairs'
distances (for TAR@FAR) in two passes, without gathering or sorting all pairs.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(parallel=True, cache=True)
def positive_ranks(
    dist: np.ndarray,
    q_pids: np.ndarray,
    q_cams: np.ndarray,
    g_cams: np.ndarray,
    pid_start: np.ndarray,
    pid_members: np.ndarray,
    max_pos: int,
) -> tuple[np.ndarray, np.ndarray]:
    """0-based ranks among kept items of each query's positives, in rank order (-1 padded).

    `pid_members[pid_start[p]:pid_start[p + 1]]` lists the gallery items of (compact) pid p.
    Items of the query's pid in the query's camera are removed; the rest of its pid are
    positives. Returns (ranks: num_q × max_pos, number of positives per query).
    """
    nq, ng = dist.shape
    ranks = np.full((nq, max_pos), -1, np.int64)
    npos = np.zeros(nq, np.int64)
    for i in numba.prange(nq):
        row = dist[i]
        lo, hi = pid_start[q_pids[i]], pid_start[q_pids[i] + 1]
        pos_d = np.empty(hi - lo, dist.dtype)
        pos_g = np.empty(hi - lo, np.int64)
        removed = np.empty(hi - lo, np.int64)
        m = 0
        r = 0
        for k in range(lo, hi):
            g = pid_members[k]
            if g_cams[g] == q_cams[i]:
                removed[r] = g
                r += 1
                continue
            # insertion sort by (distance, gallery index): positives are few
            v = row[g]
            b = m - 1
            while b >= 0 and (pos_d[b] > v or (pos_d[b] == v and pos_g[b] > g)):
                pos_d[b + 1] = pos_d[b]
                pos_g[b + 1] = pos_g[b]
                b -= 1
            pos_d[b + 1] = v
            pos_g[b + 1] = g
            m += 1
        npos[i] = m
        if m == 0:
            continue
        # Only items no farther than the last positive can rank before a positive: gather
        # them once (in gallery order), so a good model's query costs about one pass.
        near_d = np.empty(ng, dist.dtype)
        near_g = np.empty(ng, np.int64)
        c = 0
        last = pos_d[m - 1]
        for g in range(ng):
            near_d[c] = row[g]
            near_g[c] = g
            c += row[g] <= last
        for j in range(m):
            t, at = pos_d[j], pos_g[j]
            # two plain counts vectorise best; ties (rare) are then ordered by gallery index
            below = 0
            at_or_below = 0
            for k in range(c):
                below += near_d[k] < t
                at_or_below += near_d[k] <= t
            before = below
            if at_or_below - below > 1:
                for k in range(c):
                    before += near_d[k] == t and near_g[k] < at
            for k in range(r):
                v = row[removed[k]]
                before -= (v < t) or (v == t and removed[k] < at)
            ranks[i, j] = before
    return ranks, npos


@numba.njit(inline="always")
def _bin(v: float, lo: float, scale: float, nbins: int) -> int:
    b = int((v - lo) * scale)
    return min(max(b, 0), nbins - 1)


@numba.njit(parallel=True, cache=True)
def negative_histogram(
    dist: np.ndarray,
    q_pids: np.ndarray,
    pid_start: np.ndarray,
    pid_members: np.ndarray,
    lo: float,
    scale: float,
    nbins: int,
    chunks: int,
) -> np.ndarray:
    """(chunks × nbins) counts of negative pairs (different pid) by distance bin."""
    nq, ng = dist.shape
    hist = np.zeros((chunks, nbins), np.int64)
    per = (nq + chunks - 1) // chunks
    for c in numba.prange(chunks):
        h = hist[c]
        for i in range(c * per, min(nq, (c + 1) * per)):
            row = dist[i]
            for g in range(ng):
                h[_bin(row[g], lo, scale, nbins)] += 1
            for k in range(pid_start[q_pids[i]], pid_start[q_pids[i] + 1]):
                h[_bin(row[pid_members[k]], lo, scale, nbins)] -= 1
    return hist


@numba.njit(parallel=True, cache=True)
def negatives_in_bins(
    dist: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    lo: float,
    scale: float,
    nbins: int,
    wanted: np.ndarray,
    offsets: np.ndarray,
    chunks: int,
) -> np.ndarray:
    """Distances of the negative pairs whose bin is marked in `wanted`.

    `offsets[c]` is where chunk c writes (from `negative_histogram`'s per-chunk counts), so
    the chunks fill one output array in parallel without locks.
    """
    nq, ng = dist.shape
    out = np.empty(offsets[-1], dist.dtype)
    per = (nq + chunks - 1) // chunks
    for c in numba.prange(chunks):
        at = offsets[c]
        for i in range(c * per, min(nq, (c + 1) * per)):
            row = dist[i]
            p = q_pids[i]
            for g in range(ng):
                v = row[g]
                if wanted[_bin(v, lo, scale, nbins)] and g_pids[g] != p:
                    out[at] = v
                    at += 1
    return out
