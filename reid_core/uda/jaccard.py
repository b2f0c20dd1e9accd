"""k-reciprocal Jaccard distance among one set of features (Zhong et al., CVPR 2017).

Two images are close when their k-reciprocal neighbourhoods overlap, not merely when their
features are: the distance is relative to local density, so one DBSCAN `eps` (≈0.6) works
across models and feature scales, which is why pseudo-label rounds cluster on it.
"""

from __future__ import annotations

import numpy as np


def _k_reciprocal(ranks: np.ndarray, i: int, k: int) -> np.ndarray:
    forward = ranks[i, : k + 1]
    backward = ranks[forward, : k + 1]
    return forward[(backward == i).any(axis=1)]


def jaccard_distance(features: np.ndarray, k1: int = 30, k2: int = 6) -> np.ndarray:
    """Dense float32 N×N Jaccard distances in [0, 1] on L2-normalised features.

    Neighbour sets are expanded by the 2/3 rule over round(k1/2)+1 neighbours, weighted by
    exp(−d), and smoothed over the k2 nearest (local query expansion).
    """
    n = len(features)
    if n < 2:
        raise ValueError("the Jaccard distance needs at least two features")
    k1 = min(k1, n - 1)
    feats = features / np.linalg.norm(features, axis=1, keepdims=True).clip(min=1e-12)
    dist = np.clip(2.0 - 2.0 * feats @ feats.T, 0.0, None).astype(np.float32)
    ranks = np.argsort(dist, axis=1, kind="stable")[:, : k1 + 1]
    half = int(round(k1 / 2))
    weights = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        recip = _k_reciprocal(ranks, i, k1)
        expanded = recip
        for candidate in recip:
            cand = _k_reciprocal(ranks, candidate, half)
            if len(np.intersect1d(cand, recip)) > 2 / 3 * len(cand):
                expanded = np.union1d(expanded, cand)
        w = np.exp(-dist[i, expanded])
        weights[i, expanded] = w / w.sum()
    if k2 > 1:
        weights = weights[ranks[:, :k2]].mean(axis=1)
    jaccard = np.empty((n, n), dtype=np.float32)
    for i in range(n):
        support = np.flatnonzero(weights[i])
        shared = np.minimum(weights[i, support], weights[:, support]).sum(axis=1)
        jaccard[i] = 1.0 - shared / (2.0 - shared)
    np.fill_diagonal(jaccard, 0.0)
    return np.clip(jaccard, 0.0, 1.0)
