"""Query expansion: each query moves towards its nearest gallery items (queries only).

α-weighted QE: q' = (q + Σᵢ sᵢ^α gᵢ) / (1 + Σᵢ sᵢ^α) over the k most similar gallery items,
sᵢ their cosine similarity clipped at 0, on L2-normalised features, renormalised after each
round. α = 0 weighs the neighbours equally: the average QE of the FastReID paper (Eq. 7),
the mean of the query and its top-m gallery features.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

BLOCK_ROWS = 1024


def alpha_query_expansion(
    q_feats: np.ndarray, g_feats: np.ndarray, k: int = 5, alpha: float = 3.0, rounds: int = 1
) -> np.ndarray:
    """float32 expanded, L2-normalised query features (gallery features are unchanged)."""
    q = torch.as_tensor(np.asarray(q_feats, np.float32))
    g = torch.as_tensor(np.asarray(g_feats, np.float32))
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(f"feature shapes do not match: {tuple(q.shape)} vs {tuple(g.shape)}")
    if not 1 <= k <= len(g) or alpha < 0 or rounds < 1:
        raise ValueError(
            f"need 1 ≤ k ≤ gallery size ({len(g)}), α ≥ 0 and rounds ≥ 1; "
            f"got k={k}, α={alpha}, rounds={rounds}"
        )
    q, g = F.normalize(q, dim=1), F.normalize(g, dim=1)
    for _ in range(rounds):
        expanded = torch.empty_like(q)
        for start in range(0, len(q), BLOCK_ROWS):
            block = q[start : start + BLOCK_ROWS]
            sims, idx = (block @ g.t()).topk(k, dim=1)
            weights = sims.clamp(min=0).pow(alpha)  # 0^0 = 1: equal weights for α = 0
            summed = block + torch.einsum("qk,qkd->qd", weights, g[idx])
            expanded[start : start + BLOCK_ROWS] = summed / (1 + weights.sum(1, keepdim=True))
        q = F.normalize(expanded, dim=1)
    return q.numpy()


def average_query_expansion(q_feats: np.ndarray, g_feats: np.ndarray, m: int = 5) -> np.ndarray:
    """The mean of each query and its top-m gallery features (FastReID Eq. 7), normalised."""
    return alpha_query_expansion(q_feats, g_feats, k=m, alpha=0.0)
