"""Each item's k nearest items and its farthest distance, among all items of one set.

What k-reciprocal re-ranking and pseudo-label clustering need from the squared distances
(euclidean², or (1 − cos)² on unit features), without an N×N matrix. Two backends:
- "torch": symmetric blocks of distances (each pair computed once) folded into a running
  top-k by one compiled, vectorised pass; also copies or ranks the query-to-gallery part.
- "faiss": flat (exact) faiss indexes, which use the GPU where faiss-gpu is installed; the
  farthest item comes from an inner-product search on augmented vectors.
Both give the same neighbours, ties aside.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

BLOCK_ROWS = 2048
KnnBackend = Literal["torch", "faiss"]


def nearest_neighbours(
    feats: np.ndarray,
    k: int,
    metric: str,
    num_q: int = 0,
    query_out: np.ndarray | None = None,
    query_best: tuple[np.ndarray, np.ndarray] | None = None,
    backend: KnnBackend = "torch",
) -> tuple[np.ndarray, np.ndarray]:
    """(k nearest items of each item, nearest first; float64 maximum squared distance of each).

    `feats` (float32, C-contiguous; unit rows for "cosine") holds num_q queries then the
    gallery. On the way, the queries' squared distances to the gallery divided by their row
    maximum go to `query_out` (num_q × num_g), and their K nearest gallery items (gallery
    indices) with squared distances to `query_best` (two num_q × K arrays, filled in place).
    """
    if backend == "torch":
        return _torch_neighbours(feats, k, metric, num_q, query_out, query_best)
    if backend == "faiss":
        return _faiss_neighbours(feats, k, metric, num_q, query_out, query_best)
    raise ValueError(f"unknown neighbour search backend '{backend}'; known: faiss, torch")


def _torch_neighbours(feats, k, metric, num_q, query_out, query_best):
    from reid_core.evaluation.rerank_kernels import fold_block

    n = len(feats)
    query_out = np.zeros((0, 0), np.float32) if query_out is None else query_out
    query_best = query_best or (np.zeros((0, 1), np.float32), np.zeros((0, 1), np.int64))
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
            fold_block(
                d.numpy(), a, b, best_d, best_i, row_max, b != a, num_q, query_out, *query_best
            )
    np.maximum(row_max, 1e-12, out=row_max)
    query_out /= row_max[: len(query_out), None]
    return best_i, row_max.astype(np.float64)


def _faiss_neighbours(feats, k, metric, num_q, query_out, query_best):
    import faiss

    n, dim = feats.shape
    cosine = metric == "cosine"
    index = faiss.IndexFlatIP(dim) if cosine else faiss.IndexFlatL2(dim)
    index.add(feats)
    _, knn = index.search(feats, k)
    sq = (feats.astype(np.float64) ** 2).sum(1)
    if cosine:  # the largest (1 − cos)² is at the smallest cosine: search the same index
        neg_min_cos, _ = index.search(-feats, 1)
        row_max = (1.0 + neg_min_cos[:, 0].astype(np.float64)) ** 2
    else:  # max_j |x_i − x_j|² = |x_i|² + max_j ⟨(−2x_i, 1), (x_j, |x_j|²)⟩
        farthest = faiss.IndexFlatIP(dim + 1)
        farthest.add(np.hstack([feats, sq[:, None].astype(np.float32)]))
        queries = np.hstack([-2.0 * feats, np.ones((n, 1), np.float32)])
        best, _ = farthest.search(queries, 1)
        row_max = sq + best[:, 0]
    row_max = np.maximum(row_max, 1e-12)
    if query_best is not None and num_q:
        gallery = faiss.IndexFlatIP(dim) if cosine else faiss.IndexFlatL2(dim)
        gallery.add(feats[num_q:])
        found, idx = gallery.search(feats[:num_q], query_best[0].shape[1])
        query_best[0][:] = (1.0 - found) ** 2 if cosine else found
        query_best[1][:] = idx
    if query_out is not None and num_q:
        x = torch.from_numpy(feats)
        sq32 = (x * x).sum(1)
        for a in range(0, num_q, BLOCK_ROWS):
            rows = slice(a, min(a + BLOCK_ROWS, num_q))
            block = torch.from_numpy(query_out[rows])
            _block_sq_dist(x, sq32, rows, slice(num_q, n), metric, block)
            block.div_(torch.from_numpy(row_max[rows, None]).float())
    return knn.astype(np.int64), row_max


def _block_sq_dist(x, sq, rows_a: slice, rows_b: slice, metric: str, out: torch.Tensor) -> None:
    """out ← squared distances between items rows_a and rows_b."""
    if metric == "cosine":  # (1 − cos)²
        torch.addmm(torch.ones(()), x[rows_a], x[rows_b].t(), alpha=-1, out=out).square_()
    else:  # |a|² + |b|² − 2a·b
        torch.addmm(sq[None, rows_b], x[rows_a], x[rows_b].t(), alpha=-2, out=out)
        out.add_(sq[rows_a, None]).clamp_(min=0)
