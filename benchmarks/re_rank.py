"""re_rank vs the published k-reciprocal algorithm in its dense numpy form, Market-1501 size.

The reference, written here from the paper's definition in the style of the widely used numpy
code, holds several dense (q+g)×(q+g) matrices and loops over items in Python.
"""

from __future__ import annotations

import numpy as np
from common import market_args, measure, report

from reid_core.evaluation.rerank import re_rank


def reference(q, g, k1=20, k2=6, lam=0.3):
    x = np.concatenate([q, g])
    n, nq = len(x), len(q)
    sq = (x**2).sum(1)
    dist = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0).astype(np.float32)
    dist /= dist.max(1, keepdims=True)
    rank = np.argsort(dist, axis=1).astype(np.int32)
    half = int(np.round(k1 / 2))

    def reciprocal(i, k):
        forward = rank[i, : k + 1]
        return forward[np.where(rank[forward, : k + 1] == i)[0]]

    v = np.zeros_like(dist)
    for i in range(n):
        r = reciprocal(i, k1)
        expanded = r
        for c in r:
            rc = reciprocal(c, half)
            if len(np.intersect1d(rc, r)) > 2 / 3 * len(rc):
                expanded = np.append(expanded, rc)
        expanded = np.unique(expanded)
        w = np.exp(-dist[i, expanded])
        v[i, expanded] = w / w.sum()
    if k2 > 1:
        v_qe = np.zeros_like(v)
        for i in range(n):
            v_qe[i] = v[rank[i, :k2]].mean(0)
        v = v_qe
    inverted = [np.where(v[:, k] != 0)[0] for k in range(n)]
    jaccard = np.zeros((nq, n), np.float32)
    for i in range(nq):
        shared = np.zeros(n, np.float32)
        for k in np.where(v[i] != 0)[0]:
            shared[inverted[k]] += np.minimum(v[i, k], v[inverted[k], k])
        jaccard[i] = 1 - shared / (2 - shared)
    return ((1 - lam) * jaccard + lam * dist[:nq])[:, nq:]


def main() -> None:
    args = market_args(__doc__)
    rng = np.random.default_rng(0)
    # Clustered features (ids with camera noise), so neighbourhoods mean something.
    centres = rng.standard_normal((args.ids, args.dim), dtype=np.float32)
    q = centres[rng.integers(0, args.ids, args.queries)]
    g = centres[rng.integers(0, args.ids, args.gallery)]
    q = q + rng.standard_normal(q.shape, dtype=np.float32)
    g = g + rng.standard_normal(g.shape, dtype=np.float32)
    _, t_first, _ = measure(lambda: re_rank(q[:50], g[:200]))
    ours = measure(lambda: re_rank(q, g))
    ref = measure(lambda: reference(q, g))
    diff = np.abs(ours[0] - ref[0])
    report(
        args,
        ours,
        ref,
        reidflow_first_call_seconds=round(t_first, 3),
        max_abs_diff=float(diff.max()),
        share_within_1e5=float((diff <= 1e-5).mean()),
    )


if __name__ == "__main__":
    main()
