"""k-reciprocal re-ranking (Zhong et al., CVPR 2017), without any (q+g)×(q+g) dense matrix.

The published algorithm builds dense all-items matrices; the result depends only on each
item's k1+1 nearest neighbours, sparse weight rows and, for the final blend, query-to-gallery
distances. So: nearest neighbours and row maxima from symmetric block pairs folded into a
running top-k by a compiled pass, k-reciprocal expansion and weights in a compiled kernel, local
query expansion as one sparse product, and the Jaccard term only for query rows and gallery
columns. Memory: the q×g output, a few BLOCK_ROWS² blocks and O((q+g)·k1²).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from reid_core.evaluation.memory import prefaulted_zeros

BLOCK_ROWS = 2048


def re_rank(
    q_feats: np.ndarray,
    g_feats: np.ndarray,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    metric: Literal["euclidean", "cosine"] = "euclidean",
) -> np.ndarray:
    """float32 (num_q × num_g) re-ranked distances: (1−λ)·Jaccard + λ·scaled squared distance.

    Distances between all q+g items are squared and each row divided by its maximum; the
    Jaccard distance compares k-reciprocal neighbourhoods (expanded by the 2/3 rule over
    round(k1/2)+1 neighbours, weighted by exp(−d), averaged over the k2 nearest).
    """
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"need 0 ≤ λ ≤ 1, got {lambda_value}")
    feats, num_q = _joint_features(q_feats, g_feats, metric)
    if len(feats) == num_q:
        raise ValueError("need gallery items to re-rank: got none")
    out = prefaulted_zeros((num_q, len(feats) - num_q), np.float32)
    return _blend(feats, k1, k2, metric, out, lambda_value)


def jaccard_distance(
    features: np.ndarray,
    k1: int = 20,
    k2: int = 6,
    metric: Literal["euclidean", "cosine"] = "euclidean",
) -> np.ndarray:
    """Dense float32 N×N k-reciprocal Jaccard distances among one set (0 on the diagonal).

    The distance pseudo-label clustering uses: it compares neighbourhoods, not features, so
    one DBSCAN eps (≈0.6) works whatever the model's feature scale.
    """
    feats, n = _joint_features(features, np.empty((0, np.shape(features)[-1])), metric)
    out = prefaulted_zeros((n, n), np.float32)
    _blend(feats, k1, k2, metric, out, 0.0, first_col=0)
    np.clip(out, 0.0, 1.0, out=out)  # rounding can leave −1e-7: clustering needs d ≥ 0
    np.fill_diagonal(out, 0.0)  # an item's distance to itself, free of rounding
    return out


def _blend(
    feats: np.ndarray,
    k1: int,
    k2: int,
    metric: str,
    out: np.ndarray,
    lambda_value: float,
    first_col: int | None = None,
) -> np.ndarray:
    """out ← λ·out + (1−λ)·Jaccard for rows 0..len(out)-1 and items first_col.. as columns
    (default: the items after the rows, i.e. gallery columns for query rows)."""
    from scipy.sparse import csr_matrix

    from reid_core.evaluation.rerank_kernels import blend_jaccard, expansion_weights

    n = len(feats)
    if k1 < 1 or k2 < 1:
        raise ValueError(f"need k1 ≥ 1 and k2 ≥ 1; got {k1}, {k2}")
    if n < 2:
        raise ValueError(f"need at least two items, got {n}")
    k1, k2 = min(k1, n - 1), min(k2, n)
    first_col = len(out) if first_col is None else first_col
    knn, row_max = _neighbours(feats, k1 + 1, metric, out if first_col else out[:0])
    half = int(np.round(k1 / 2.0))
    feats64 = feats.astype(np.float64)
    cols, weights, counts = expansion_weights(
        knn,
        k1,
        feats64,
        (feats64**2).sum(1),
        row_max,
        metric == "cosine",
        (k1 + 1) * (half + 2),
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
    by_column = v.tocsc()
    blend_jaccard(
        out,
        lambda_value,
        v.indptr,
        v.indices,
        v.data,
        by_column.indptr,
        by_column.indices,
        by_column.data,
        first_col,
    )
    return out


def _joint_features(
    q_feats: np.ndarray, g_feats: np.ndarray, metric: str
) -> tuple[np.ndarray, int]:
    q, g = np.asarray(q_feats, np.float32), np.asarray(g_feats, np.float32)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(f"feature shapes do not match: {q.shape} vs {g.shape}")
    if len(q) == 0:
        raise ValueError("need queries (or, for a Jaccard distance, items): got none")
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"unknown metric '{metric}'; known: cosine, euclidean")
    feats = np.concatenate([q, g])
    if not np.isfinite(feats).all():
        raise ValueError("features contain NaN or infinity")
    if metric == "cosine":
        feats /= np.linalg.norm(feats, axis=1, keepdims=True).clip(min=1e-12)
    return np.ascontiguousarray(feats), len(q)


def _neighbours(
    feats: np.ndarray, k: int, metric: str, query_out: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each item's k nearest items (nearest first) and its row maximum of squared distances;
    the query rows' scaled squared distances to the gallery go to `query_out` on the way.

    Distances are symmetric, so only block pairs (a ≤ b) are computed, each folded into the
    running top-k of the rows of both blocks by one compiled pass.
    """
    from reid_core.evaluation.rerank_kernels import fold_block

    n, num_q = len(feats), len(query_out)
    x = torch.from_numpy(feats)
    sq = (x * x).sum(1)
    best_d = np.full((n, k), np.inf, np.float32)
    best_i = np.zeros((n, k), np.int64)
    row_max = np.zeros(n, np.float32)
    buffer = torch.empty(min(n, BLOCK_ROWS) ** 2)  # reused: fresh pages cost as much as math
    starts = list(range(0, n, BLOCK_ROWS))
    for a in starts:
        rows_a = slice(a, min(a + BLOCK_ROWS, n))
        for b in starts[starts.index(a) :]:
            rows_b = slice(b, min(b + BLOCK_ROWS, n))
            d = buffer[: (rows_a.stop - a) * (rows_b.stop - b)].view(rows_a.stop - a, -1)
            _block_sq_dist(x, sq, rows_a, rows_b, metric, d)
            fold_block(d.numpy(), a, b, best_d, best_i, row_max, b != a, query_out)
    np.maximum(row_max, 1e-12, out=row_max)
    query_out /= row_max[:num_q, None]
    return best_i, row_max.astype(np.float64)


def _block_sq_dist(x, sq, rows_a: slice, rows_b: slice, metric: str, out: torch.Tensor) -> None:
    """out ← squared distances between items rows_a and rows_b."""
    if metric == "cosine":  # (1 − cos)²
        torch.addmm(torch.ones(()), x[rows_a], x[rows_b].t(), alpha=-1, out=out).square_()
    else:  # |a|² + |b|² − 2a·b
        torch.addmm(sq[None, rows_b], x[rows_a], x[rows_b].t(), alpha=-2, out=out)
        out.add_(sq[rows_a, None]).clamp_(min=0)
