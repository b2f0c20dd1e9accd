"""Pseudo-label clustering (DBSCAN on the k-reciprocal Jaccard distance) without the N×N matrix.

reidflow's `cluster_features` computes only the pairs sharing a k-reciprocal neighbour and keeps
those within eps, as a sparse matrix; the reference is the dense way: `jaccard_distance`'s N×N
float32 matrix, then DBSCAN on it. Clustered 512-d features, ~16 images per identity, at N =
5,000 and 13,000 (Market-1501's train set is 12,936 images); k1=30, k2=6, eps=0.6,
min_samples=4 (the adapt stage's defaults).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from common import measure
from sklearn.cluster import DBSCAN

from reid_core.evaluation.rerank import jaccard_distance, jaccard_neighbours
from reid_core.uda.pseudo_labels import cluster_features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 13000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--per-id", type=int, default=16, help="images per identity, on average")
    parser.add_argument("--noise", type=float, default=2.4, help="within-id spread")
    parser.add_argument("--k1", type=int, default=30)
    parser.add_argument("--k2", type=int, default=6)
    parser.add_argument("--eps", type=float, default=0.6)
    parser.add_argument("--min-samples", type=int, default=4)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    k = (args.k1, args.k2)

    def dense(feats: np.ndarray) -> np.ndarray:
        dbscan = DBSCAN(eps=args.eps, min_samples=args.min_samples, metric="precomputed")
        return dbscan.fit_predict(jaccard_distance(feats, *k, "cosine"))

    def sparse(feats: np.ndarray) -> np.ndarray:
        return cluster_features(feats, args.eps, args.min_samples, *k)

    results = {}
    for n in args.sizes:
        rng = np.random.default_rng(0)
        ids = n // args.per_id
        centres = rng.standard_normal((ids, args.dim), dtype=np.float32)
        noise = rng.standard_normal((n, args.dim), dtype=np.float32)
        feats = centres[rng.integers(0, ids, n)] + np.float32(args.noise) * noise
        sparse(feats[:500]), dense(feats[:500])  # compiled kernels loaded before timing
        ours = measure(lambda feats=feats: sparse(feats))
        reference = measure(lambda feats=feats: dense(feats))
        cutoff = float(np.nextafter(np.float32(args.eps), np.float32(1)))  # as cluster_features
        nnz = jaccard_neighbours(feats, *k, "cosine", max_distance=cutoff).nnz
        labels = ours[0]
        result = {
            "problem": f"{n} images, {args.dim}-d, {ids} ids, k1={args.k1}, k2={args.k2}, "
            f"eps={args.eps}, min_samples={args.min_samples}",
            "reidflow_seconds": round(ours[1], 3),
            "reference_seconds": round(reference[1], 3),
            "speedup": round(reference[1] / ours[1], 2),
            "reidflow_peak_rss_rise_mib": round(ours[2] / 2**20, 1),
            "reference_peak_rss_rise_mib": round(reference[2] / 2**20, 1),
            "dense_matrix_mib": round(n * n * 4 / 2**20, 1),
            "labels_identical": bool(np.array_equal(labels, reference[0])),
            "clusters": int(len(np.unique(labels[labels >= 0]))),
            "outliers": int((labels < 0).sum()),
            "nnz": nnz,
            "nnz_share_of_n2": float(f"{nnz / n**2:.3g}"),
        }
        print(f"N = {n}")
        for key, value in result.items():
            print(f"{key:>28}: {value}")
        results[f"n{n}"] = result
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
