"""Pseudo labels from clustering target features, and their quality against hidden true ids."""

from __future__ import annotations

import numpy as np

from reid_core.evaluation.neighbours import KnnBackend
from reid_core.evaluation.rerank import jaccard_neighbours


class PseudoLabelError(RuntimeError):
    """Clustering gave labels that cannot be trained on (empty, all outliers, one cluster)."""


def cluster_features(
    features: np.ndarray,
    eps: float,
    min_samples: int,
    k1: int = 30,
    k2: int = 6,
    knn_backend: KnnBackend = "torch",
) -> np.ndarray:
    """DBSCAN on the k-reciprocal Jaccard distance (of the re-ranking code); -1 marks outliers.

    The distances come as a sparse matrix of the pairs within eps (< 1) only, so memory grows
    with N·k1² and those pairs, not N² (the dense matrix takes 0.67 GB for a Market-sized train
    set); the clusters are those of DBSCAN on the dense matrix. `knn_backend` is the
    nearest-neighbour search: "torch" or "faiss" (GPU with faiss-gpu).
    """
    from sklearn.cluster import DBSCAN

    if len(features) < 2:
        raise PseudoLabelError(f"the target set has {len(features)} images: nothing to cluster")
    if not (eps > 0 and np.float32(eps) < 1):
        raise ValueError(f"need 0 < eps < 1 on the Jaccard distance, got {eps}")
    # DBSCAN's neighbours are d ≤ eps, compared in float32 (or float64): every float32
    # d ≤ float32(eps) is kept, so none is missing whichever way.
    cutoff = float(np.nextafter(np.float32(eps), np.float32(1)))
    dist = jaccard_neighbours(features, k1, k2, "cosine", knn_backend, max_distance=cutoff)
    labels = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(dist)
    clusters = np.unique(labels[labels >= 0])
    if len(clusters) == 0:
        raise PseudoLabelError(
            f"every one of {len(features)} target images is an outlier at eps={eps}, "
            f"min_samples={min_samples}: raise eps or lower min_samples"
        )
    if len(clusters) == 1:
        raise PseudoLabelError(
            f"all clustered target images collapsed into one cluster at eps={eps}: lower eps"
        )
    return labels


def outliers_as_singletons(labels: np.ndarray) -> np.ndarray:
    """Give each outlier its own new label (the 'keep' outlier policy)."""
    labels = labels.copy()
    out = labels < 0
    labels[out] = labels.max() + 1 + np.arange(out.sum())
    return labels


def label_quality(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """NMI, ARI and pairwise precision/recall of clustered points (outliers excluded)."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
    from sklearn.metrics.cluster import contingency_matrix

    mask = pred >= 0
    p, t = pred[mask], true[mask]
    if len(p) == 0:
        return {"nmi": 0.0, "ari": 0.0, "pair_precision": 0.0, "pair_recall": 0.0}
    table = contingency_matrix(t, p, sparse=True)
    together = _pairs(table.data)
    pred_pairs = _pairs(np.unique(p, return_counts=True)[1])
    true_pairs = _pairs(np.unique(true, return_counts=True)[1])  # all images: recall sees outliers
    return {
        "nmi": float(normalized_mutual_info_score(t, p)),
        "ari": float(adjusted_rand_score(t, p)),
        "pair_precision": float(together / pred_pairs) if pred_pairs else 0.0,
        "pair_recall": float(together / true_pairs) if true_pairs else 0.0,
    }


def _pairs(group_sizes: np.ndarray) -> float:
    sizes = np.asarray(group_sizes, dtype=np.float64)
    return float((sizes * (sizes - 1) / 2).sum())
