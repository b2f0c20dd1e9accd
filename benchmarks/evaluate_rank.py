"""evaluate_rank vs a straightforward numpy implementation, on a Market-1501-sized problem.

The reference argsorts every row of the full distance matrix at once and computes the metrics
from the sorted match matrix, as most re-id codebases do. Both must agree to 1e-6. Two
problems: random features (positives anywhere: the worst case for reidflow) and clustered ones
(positives near the top, as with a trained model).
"""

from __future__ import annotations

import numpy as np
from common import market_args, market_problem, measure, report

from reid_core.evaluation import evaluate_rank


def reference(dist, q_pids, g_pids, q_cams, g_cams, max_rank):
    order = np.argsort(dist, axis=1)
    matches = g_pids[order] == q_pids[:, None]
    keep = ~(matches & (g_cams[order] == q_cams[:, None]))
    cmc_all, aps, inps = [], [], []
    for i in range(len(q_pids)):
        row = matches[i][keep[i]]
        if not row.any():
            continue
        cmc = row.cumsum()
        cmc_all.append((cmc[:max_rank] >= 1).astype(np.float64))
        last = np.flatnonzero(row)[-1]
        inps.append(cmc[last] / (last + 1.0))
        precision = cmc / (np.arange(len(row)) + 1.0)
        aps.append((precision * row).sum() / row.sum())
    return np.mean(cmc_all, 0), float(np.mean(aps)), float(np.mean(inps))


def compare(args, label: str, clustered: bool) -> None:
    dist, q_pids, g_pids, q_cams, g_cams = market_problem(args, clustered)
    # The first call in a process loads (or, once per install, compiles) the numba kernel.
    _, t_first, _ = measure(lambda: evaluate_rank(dist[:8], q_pids[:8], g_pids, q_cams[:8], g_cams))
    ours = measure(lambda: evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, 50))
    ref = measure(lambda: reference(dist, q_pids, g_pids, q_cams, g_cams, 50))
    np.testing.assert_allclose(ours[0].cmc, ref[0][0], atol=1e-6)
    assert abs(ours[0].mAP - ref[0][1]) < 1e-6 and abs(ours[0].mINP - ref[0][2]) < 1e-6
    extra = {"mAP": round(ours[0].mAP, 4), "reidflow_first_call_seconds": round(t_first, 3)}
    report(args, ours, ref, label, **extra)


def main() -> None:
    args = market_args(__doc__)
    compare(args, "random features", clustered=False)
    compare(args, "clustered features", clustered=True)


if __name__ == "__main__":
    main()
