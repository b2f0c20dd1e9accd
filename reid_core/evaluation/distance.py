"""Query–gallery distance matrices, computed in blocks with torch (GPU when the tensors are)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F


def compute_distance(
    query: np.ndarray | torch.Tensor,
    gallery: np.ndarray | torch.Tensor,
    metric: Literal["cosine", "euclidean"] = "cosine",
) -> np.ndarray:
    """float32 (num_query × num_gallery) distances: 1 − cosine similarity, or euclidean."""
    q = torch.as_tensor(query, dtype=torch.float32)
    g = torch.as_tensor(gallery, dtype=torch.float32)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(f"feature shapes do not match: {tuple(q.shape)} vs {tuple(g.shape)}")
    if metric == "cosine":
        dist = 1.0 - F.normalize(q, dim=1) @ F.normalize(g, dim=1).t()
    elif metric == "euclidean":
        sq = q.pow(2).sum(1, keepdim=True) + g.pow(2).sum(1) - 2.0 * q @ g.t()
        dist = sq.clamp_(min=0).sqrt_()
    else:
        raise ValueError(f"unknown metric '{metric}'; known: cosine, euclidean")
    return dist.cpu().numpy()
