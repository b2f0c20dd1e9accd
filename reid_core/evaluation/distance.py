"""Query–gallery distances, computed in blocks of query rows with torch (on the GPU when the
features are there), so that a caller can consume a large matrix without holding it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from reid_core.evaluation.memory import prefaulted_zeros

BLOCK_ELEMENTS = 2**25  # distances per block: 128 MB of float32


def compute_distance(
    query: np.ndarray | torch.Tensor,
    gallery: np.ndarray | torch.Tensor,
    metric: Literal["cosine", "euclidean"] = "cosine",
) -> np.ndarray:
    """float32 (num_query × num_gallery) distances: 1 − cosine similarity, or euclidean."""
    out = prefaulted_zeros((len(query), len(gallery)), np.float32)
    for rows, block in distance_blocks(query, gallery, metric):
        out[rows] = block
    return out


def distance_blocks(
    query: np.ndarray | torch.Tensor,
    gallery: np.ndarray | torch.Tensor,
    metric: Literal["cosine", "euclidean"] = "cosine",
    block_rows: int | None = None,
) -> Iterator[tuple[slice, np.ndarray]]:
    """(query rows, their float32 distances to the whole gallery) for consecutive row blocks,
    computed on the device the features are on; the gallery is prepared once."""
    q = torch.as_tensor(query, dtype=torch.float32)
    g = torch.as_tensor(gallery, dtype=torch.float32, device=q.device)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(f"feature shapes do not match: {tuple(q.shape)} vs {tuple(g.shape)}")
    if metric == "cosine":
        g = F.normalize(g, dim=1)
    elif metric == "euclidean":
        g_sq = g.pow(2).sum(1)
    else:
        raise ValueError(f"unknown metric '{metric}'; known: cosine, euclidean")
    block_rows = block_rows or max(1, BLOCK_ELEMENTS // max(len(g), 1))
    g_t = g.t()
    for start in range(0, len(q), block_rows):
        rows = slice(start, min(start + block_rows, len(q)))
        if metric == "cosine":
            block = torch.addmm(
                torch.ones((), device=q.device), F.normalize(q[rows], dim=1), g_t, alpha=-1
            )
        else:
            qb = q[rows]
            block = torch.addmm(g_sq[None, :], qb, g_t, alpha=-2)
            block.add_(qb.pow(2).sum(1, keepdim=True)).clamp_(min=0).sqrt_()
        yield rows, block.cpu().numpy()
