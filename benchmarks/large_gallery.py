"""Large gallery: 10,000 queries × 200,000 gallery items, 512-d, on one machine.

reidflow evaluates from features in query blocks (exact: the dense evaluation's numbers) and
re-ranks in top-k mode (each query's exact re-ranked top-k; no q×g or (q+g)² matrix). The
reference for the evaluation is the dense way: the whole q×g distance matrix, then
`evaluate_rank`. Dense re-ranking has no reference here: its (q+g)² matrices would take
~180 GB per copy.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from common import measure

from reid_core.evaluation import (
    compute_distance,
    evaluate_features,
    evaluate_rank,
    evaluate_topk,
    re_rank_topk,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--gallery", type=int, default=200_000)
    parser.add_argument("--ids", type=int, default=20_000)
    parser.add_argument("--cams", type=int, default=8)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--noise", type=float, default=2.2, help="within-id spread")
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--no-dense-reference", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((args.ids, args.dim), dtype=np.float32)
    q_pids = rng.integers(0, args.ids, args.queries)
    g_pids = rng.integers(0, args.ids, args.gallery)
    noise = np.float32(args.noise)
    q = centres[q_pids] + noise * rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    g = centres[g_pids] + noise * rng.standard_normal((args.gallery, args.dim), dtype=np.float32)
    q_cams = rng.integers(0, args.cams, args.queries)
    g_cams = rng.integers(0, args.cams, args.gallery)
    labels = (q_pids, g_pids, q_cams, g_cams)
    evaluate_features(q[:50], g[:500], q_pids[:50], g_pids[:500], q_cams[:50], g_cams[:500])
    re_rank_topk(q[:50], g[:500], 10)  # compiled kernels loaded before timing

    streamed, t_stream, m_stream = measure(lambda: evaluate_features(q, g, *labels))
    result = {
        "problem": f"{args.queries}x{args.gallery}, {args.dim}-d, {args.ids} ids",
        "evaluate_streamed_seconds": round(t_stream, 1),
        "evaluate_streamed_peak_rss_rise_mib": round(m_stream / 2**20, 1),
        "mAP": round(streamed.mAP, 6),
        "rank1": round(float(streamed.cmc[0]), 6),
    }
    if not args.no_dense_reference:
        dense, t_dense, m_dense = measure(lambda: evaluate_rank(compute_distance(q, g), *labels))
        result |= {
            "evaluate_dense_reference_seconds": round(t_dense, 1),
            "evaluate_dense_reference_peak_rss_rise_mib": round(m_dense / 2**20, 1),
            "evaluate_speedup": round(t_dense / t_stream, 2),
            "max_ap_difference": float(np.abs(dense.all_ap - streamed.all_ap).max()),
        }
    (indices, _), t_rr, m_rr = measure(lambda: re_rank_topk(q, g, args.top_k))
    topk = evaluate_topk(indices, *labels)
    result |= {
        f"re_rank_top{args.top_k}_seconds": round(t_rr, 1),
        f"re_rank_top{args.top_k}_peak_rss_rise_mib": round(m_rr / 2**20, 1),
        f"re_ranked_mAP_at_{args.top_k}": round(topk.mAP_at_k, 6),
        "re_ranked_rank1": round(float(topk.cmc[0]), 6),
        f"re_ranked_complete_at_{args.top_k}": round(topk.complete, 4),
    }
    for key, value in result.items():
        print(f"{key:>40}: {value}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
