"""Compiled kernel of `evaluate_rank`: each positive's exact rank, without sorting any row.

A query's metrics depend only on where its positives land among the kept gallery items. For
each positive, one pass over the row counts the items ranked before it; LLVM vectorises that
count, so a query costs (number of positives) × (gallery size) cheap compares instead of a
full argsort. Ties are ordered by gallery index, exactly as a stable sort orders them.
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
        for j in range(m):
            t = pos_d[j]
            below = 0
            at_or_below = 0
            for g in range(ng):
                below += row[g] < t
                at_or_below += row[g] <= t
            before = below
            if at_or_below - below > 1:  # other items at exactly this distance: index order
                for g in range(pos_g[j]):
                    before += row[g] == t
            for k in range(r):
                v = row[removed[k]]
                before -= (v < t) or (v == t and removed[k] < pos_g[j])
            ranks[i, j] = before
    return ranks, npos
