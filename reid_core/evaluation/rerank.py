"""k-reciprocal re-ranking (Zhong et al., CVPR 2017), without any (q+g)×(q+g) dense matrix.

The published algorithm builds dense all-items matrices; the result depends only on each
item's k1+1 nearest neighbours, sparse weight rows and, for the final blend, query-to-gallery
distances. So: nearest neighbours and row maxima from symmetric block pairs folded into a
running top-k by a compiled pass, k-reciprocal expansion and weights in a compiled kernel, local
query expansion as one sparse product, and the Jaccard term only for query rows and gallery
columns. Memory: the q×g output, the neighbour search's blocks and O((q+g)·k1²).
For one set (pseudo-label clustering), the Jaccard distances among its items: dense, or
sparse, computed only for the pairs sharing a neighbourhood entry (the others are at 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numba
import numpy as np

from reid_core.evaluation.memory import prefaulted_zeros
from reid_core.evaluation.neighbours import KnnBackend, nearest_neighbours

if TYPE_CHECKING:
    from scipy.sparse import csr_matrix


def re_rank(
    q_feats: np.ndarray,
    g_feats: np.ndarray,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    metric: Literal["euclidean", "cosine"] = "euclidean",
    knn_backend: KnnBackend = "torch",
) -> np.ndarray:
    """float32 (num_q × num_g) re-ranked distances: (1−λ)·Jaccard + λ·scaled squared distance.

    Distances between all q+g items are squared and each row divided by its maximum; the
    Jaccard distance compares k-reciprocal neighbourhoods (expanded by the 2/3 rule over
    round(k1/2)+1 neighbours, weighted by exp(−d), averaged over the k2 nearest).
    `knn_backend` chooses the nearest-neighbour search: "torch" or "faiss" (GPU with faiss-gpu).
    """
    from reid_core.evaluation.rerank_kernels import blend_jaccard

    _check_lambda(lambda_value)
    feats, num_q = _joint_features(q_feats, g_feats, metric)
    out = prefaulted_zeros((num_q, len(feats) - num_q), np.float32)
    hoods = _neighbourhoods(feats, num_q, k1, k2, metric, knn_backend, query_out=out)
    blend_jaccard(out, lambda_value, *hoods.by_row, *hoods.by_column, num_q)
    return out


def re_rank_topk(
    q_feats: np.ndarray,
    g_feats: np.ndarray,
    top_k: int = 100,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    metric: Literal["euclidean", "cosine"] = "euclidean",
    knn_backend: KnnBackend = "torch",
) -> tuple[np.ndarray, np.ndarray]:
    """Each query's top_k gallery items under `re_rank`'s distance, for galleries too large
    for a dense q×g matrix: (indices int64, distances float32), both num_q × top_k, nearest
    first (ties by gallery index).

    Exact, not approximate: an item sharing no k-reciprocal neighbour with the query has
    Jaccard distance 1, so its re-ranked distance only grows with the plain distance, and
    any such item in the top_k is among the query's top_k by plain distance. The candidates
    are those items plus every item that shares a neighbour. Memory: O((q+g)·k1² + q·top_k).
    """
    from reid_core.evaluation.rerank_kernels import topk_jaccard

    _check_lambda(lambda_value)
    if top_k < 1:
        raise ValueError(f"need top_k ≥ 1, got {top_k}")
    feats, num_q = _joint_features(q_feats, g_feats, metric)
    nearest = min(top_k, len(feats) - num_q)
    query_best = (
        np.full((num_q, nearest), np.inf, np.float32),
        np.zeros((num_q, nearest), np.int64),
    )
    hoods = _neighbourhoods(feats, num_q, k1, k2, metric, knn_backend, query_best=query_best)
    return topk_jaccard(
        query_best[1],
        query_best[0],
        lambda_value,
        *hoods.by_row,
        *hoods.by_column,
        hoods.feats64,
        hoods.sq_norms,
        hoods.row_max,
        metric == "cosine",
        num_q,
        4 * numba.get_num_threads(),
    )


def jaccard_distance(
    features: np.ndarray,
    k1: int = 20,
    k2: int = 6,
    metric: Literal["euclidean", "cosine"] = "euclidean",
    knn_backend: KnnBackend = "torch",
) -> np.ndarray:
    """Dense float32 N×N k-reciprocal Jaccard distances among one set (0 on the diagonal).

    The distance pseudo-label clustering uses: it compares neighbourhoods, not features, so
    one DBSCAN eps (≈0.6) works whatever the model's feature scale. N² memory: for large sets,
    `jaccard_neighbours` holds the same values where they are below 1.
    """
    from reid_core.evaluation.rerank_kernels import blend_jaccard

    hoods = _one_set_neighbourhoods(features, k1, k2, metric, knn_backend)
    n = len(hoods.sq_norms)
    out = prefaulted_zeros((n, n), np.float32)
    blend_jaccard(out, 0.0, *hoods.by_row, *hoods.by_column, 0)
    np.clip(out, 0.0, 1.0, out=out)  # rounding can leave −1e-7: clustering needs d ≥ 0
    np.fill_diagonal(out, 0.0)  # an item's distance to itself, free of rounding
    return out


def jaccard_neighbours(
    features: np.ndarray,
    k1: int = 20,
    k2: int = 6,
    metric: Literal["euclidean", "cosine"] = "euclidean",
    knn_backend: KnnBackend = "torch",
    max_distance: float = 1.0,
) -> csr_matrix:
    """`jaccard_distance`'s entries below max_distance (≤ 1), as a float32 N×N CSR matrix:
    each row holds the item itself (an explicit 0) and the items within max_distance, by
    ascending index; the same pairs in both directions, with the same values.

    For pseudo-label clustering of sets too large for the dense matrix (0.67 GB for 13k items,
    4.3 GB for 33k). Items whose k-reciprocal neighbourhoods share nothing are at distance
    exactly 1, so only pairs sharing a neighbourhood entry are computed, each once, and only
    those below max_distance are kept: memory O(N·k1²) plus the pairs kept, few for a DBSCAN
    eps (≈0.6; at max_distance 1 they may be a third of all pairs). DBSCAN(metric=
    "precomputed") clusters it as the dense matrix for an eps < 1 whose pairs d ≤ eps are kept.
    """
    from scipy.sparse import csr_matrix

    from reid_core.evaluation.rerank_kernels import jaccard_above, mirror_upper

    if not 0.0 < max_distance <= 1.0:
        raise ValueError(
            f"need 0 < max_distance ≤ 1, got {max_distance}: beyond 1 lie the pairs that share"
            " nothing, all at distance 1"
        )
    hoods = _one_set_neighbourhoods(features, k1, k2, metric, knn_backend)
    n = len(hoods.sq_norms)
    v = (*hoods.by_row, *hoods.by_column, max_distance, 4 * numba.get_num_threads())
    int32_max = np.iinfo(np.int32).max
    upper_ptr = np.zeros(n + 1, np.int64)  # each pair once, then mirrored
    upper_cols = np.empty(0, np.int32 if n <= int32_max else np.int64)
    jaccard_above(*v, False, upper_ptr, upper_cols, np.empty(0, np.float32))
    np.cumsum(upper_ptr, out=upper_ptr)
    upper_cols = np.empty(upper_ptr[-1], upper_cols.dtype)
    upper_vals = np.empty(upper_ptr[-1], np.float32)
    jaccard_above(*v, True, upper_ptr, upper_cols, upper_vals)
    indptr = np.zeros(n + 1, np.int64)  # row i: below the diagonal, i itself, above it
    np.cumsum(np.bincount(upper_cols, minlength=n) + 1 + np.diff(upper_ptr), out=indptr[1:])
    index_dtype = np.int32 if indptr[-1] <= int32_max else np.int64  # as scipy needs
    indices, values = np.empty(indptr[-1], index_dtype), np.empty(indptr[-1], np.float32)
    mirror_upper(upper_ptr, upper_cols, upper_vals, indptr, indices, values)
    out = csr_matrix((values, indices, indptr.astype(index_dtype)), shape=(n, n))
    out.has_sorted_indices = True
    return out


def _one_set_neighbourhoods(
    features: np.ndarray, k1: int, k2: int, metric: str, knn_backend: KnnBackend
) -> _Neighbourhoods:
    feats, _ = _joint_features(features, np.empty((0, np.shape(features)[-1])), metric, False)
    return _neighbourhoods(feats, 0, k1, k2, metric, knn_backend)


@dataclass(frozen=True)
class _Neighbourhoods:
    """Every item's weighted k-reciprocal neighbourhood V (after local query expansion), by
    rows and by columns (indptr, indices, data), and what scaled distances are computed from."""

    by_row: tuple[np.ndarray, np.ndarray, np.ndarray]
    by_column: tuple[np.ndarray, np.ndarray, np.ndarray]
    feats64: np.ndarray
    sq_norms: np.ndarray
    row_max: np.ndarray


def _neighbourhoods(
    feats: np.ndarray,
    num_q: int,
    k1: int,
    k2: int,
    metric: str,
    knn_backend: KnnBackend,
    query_out: np.ndarray | None = None,
    query_best: tuple[np.ndarray, np.ndarray] | None = None,
) -> _Neighbourhoods:
    """Neighbourhoods of all items (the first num_q are queries); on the way, the queries'
    scaled distances to the gallery go to query_out, or their nearest gallery items (by
    plain distance) to query_best."""
    from scipy.sparse import csr_matrix

    from reid_core.evaluation.rerank_kernels import expansion_weights

    n = len(feats)
    if k1 < 1 or k2 < 1:
        raise ValueError(f"need k1 ≥ 1 and k2 ≥ 1; got {k1}, {k2}")
    if n < 2:
        raise ValueError(f"need at least two items, got {n}")
    k1, k2 = min(k1, n - 1), min(k2, n)
    knn, row_max = nearest_neighbours(
        feats, k1 + 1, metric, num_q, query_out, query_best, knn_backend
    )
    half = int(np.round(k1 / 2.0))
    feats64 = feats.astype(np.float64)
    sq_norms = (feats64**2).sum(1)
    cols, weights, counts = expansion_weights(
        knn, k1, feats64, sq_norms, row_max, metric == "cosine", (k1 + 1) * (half + 2)
    )
    filled = cols >= 0
    indptr = np.concatenate([[0], counts.cumsum()])
    v = csr_matrix((weights[filled], cols[filled], indptr), shape=(n, n))
    if k2 > 1:  # local query expansion: the mean of the k2 nearest items' rows
        mean_of_nearest = csr_matrix(
            (
                np.full(n * k2, 1.0 / k2, np.float32),
                knn[:, :k2].ravel(),
                np.arange(0, n * k2 + 1, k2),
            ),
            shape=(n, n),
        )
        v = (mean_of_nearest @ v).astype(np.float32)
    v = v.tocsr()
    v.sort_indices()  # one order of k for every row: the shared sums S_ij and S_ji are equal
    by_column = v.tocsc()
    return _Neighbourhoods(
        (v.indptr, v.indices, v.data),
        (by_column.indptr, by_column.indices, by_column.data),
        feats64,
        sq_norms,
        row_max,
    )


def _check_lambda(lambda_value: float) -> None:
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"need 0 ≤ λ ≤ 1, got {lambda_value}")


def _joint_features(
    q_feats: np.ndarray, g_feats: np.ndarray, metric: str, need_gallery: bool = True
) -> tuple[np.ndarray, int]:
    q, g = np.asarray(q_feats, np.float32), np.asarray(g_feats, np.float32)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(f"feature shapes do not match: {q.shape} vs {g.shape}")
    if len(q) == 0:
        raise ValueError("need queries (or, for a Jaccard distance, items): got none")
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"unknown metric '{metric}'; known: cosine, euclidean")
    feats = np.concatenate([q, g])
    if need_gallery and len(g) == 0:
        raise ValueError("need gallery items to re-rank: got none")
    if not np.isfinite(feats).all():
        raise ValueError("features contain NaN or infinity")
    if metric == "cosine":
        feats /= np.linalg.norm(feats, axis=1, keepdims=True).clip(min=1e-12)
    return np.ascontiguousarray(feats), len(q)
