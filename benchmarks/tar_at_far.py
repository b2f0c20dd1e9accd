"""tar_at_far vs the definition computed plainly (gather all negatives, sort them), on all
query–gallery pairs of a Market-1501-sized problem (53.6 M pairs). Both must agree exactly.
"""

from __future__ import annotations

import numpy as np
from common import market_args, market_problem, measure, report

from reid_core.evaluation import tar_at_far

FARS = (1e-4, 1e-3, 1e-2)


def reference(dist, q_pids, g_pids, q_cams, g_cams):
    same = q_pids[:, None] == g_pids[None, :]
    positives = dist[same & (q_cams[:, None] != g_cams[None, :])]
    negatives = np.sort(dist[~same])
    return {far: float((positives < negatives[int(far * len(negatives))]).mean()) for far in FARS}


def main() -> None:
    args = market_args(__doc__)
    problem = market_problem(args)
    _, t_first, _ = measure(
        lambda: tar_at_far(
            *(p[:8] for p in problem[:2]), *problem[2:3], problem[3][:8], problem[4], FARS
        )
    )
    ours = measure(lambda: tar_at_far(*problem, FARS))
    ref = measure(lambda: reference(*problem))
    assert ours[0].tar == ref[0], (ours[0].tar, ref[0])
    report(
        args,
        ours,
        ref,
        reidflow_first_call_seconds=round(t_first, 3),
        tar={f"{k:g}": round(v, 6) for k, v in ours[0].tar.items()},
    )


if __name__ == "__main__":
    main()
