"""evaluate_rank vs a straightforward numpy implementation, on a Market-1501-sized problem.

The reference argsorts every row of the full distance matrix at once and computes the metrics
from the sorted match matrix, as most re-id codebases do. Both must agree to 1e-6.
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc
from pathlib import Path

import numpy as np

from reid_core.evaluation import compute_distance, evaluate_rank


def reference(dist, q_pids, g_pids, q_cams, g_cams, max_rank):
    order = np.argsort(dist, axis=1)
    g_pids_sorted = g_pids[order]
    matches = g_pids_sorted == q_pids[:, None]
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


def measure(fn):
    tracemalloc.start()
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queries", type=int, default=3368)
    parser.add_argument("--gallery", type=int, default=15913)
    parser.add_argument("--ids", type=int, default=751)
    parser.add_argument("--cams", type=int, default=6)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    q_pids, g_pids = (
        rng.integers(0, args.ids, args.queries),
        rng.integers(0, args.ids, args.gallery),
    )
    q_cams, g_cams = (
        rng.integers(0, args.cams, args.queries),
        rng.integers(0, args.cams, args.gallery),
    )
    q = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    g = rng.standard_normal((args.gallery, args.dim), dtype=np.float32)
    dist = compute_distance(q, g, "cosine")

    # The first call in a process loads (or, once per install, compiles) the numba kernel.
    _, t_first, _ = measure(lambda: evaluate_rank(dist[:8], q_pids[:8], g_pids, q_cams[:8], g_cams))
    ours, t_ours, m_ours = measure(lambda: evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, 50))
    ref, t_ref, m_ref = measure(lambda: reference(dist, q_pids, g_pids, q_cams, g_cams, 50))
    np.testing.assert_allclose(ours.cmc, ref[0], atol=1e-6)
    assert abs(ours.mAP - ref[1]) < 1e-6 and abs(ours.mINP - ref[2]) < 1e-6

    result = {
        "problem": f"{args.queries}x{args.gallery}, {args.ids} ids, {args.cams} cameras",
        "reidflow_seconds": round(t_ours, 3),
        "reidflow_first_call_seconds": round(t_first, 3),
        "reference_seconds": round(t_ref, 3),
        "speedup": round(t_ref / t_ours, 2),
        "reidflow_peak_mib": round(m_ours / 2**20, 1),
        "reference_peak_mib": round(m_ref / 2**20, 1),
    }
    for key, value in result.items():
        print(f"{key:>20}: {value}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
