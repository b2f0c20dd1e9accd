"""DSR distance (Deep Spatial feature Reconstruction, He et al., CVPR 2018) for partial re-id.

A partial query shows only part of a body, so its pooled feature does not match a holistic
gallery image's. DSR compares spatial feature maps instead, without aligning them: every query
position x (a C-dim feature) is reconstructed from the gallery item's N_g positions Y (C × N_g),

    w = argmin ‖x − Y w‖² + λ‖w‖²  =  (YᵀY + λI)⁻¹ Yᵀ x,

and the distance is the mean over query positions of the residual norm ‖x − Y w‖. A query
that is a crop of the gallery item is reconstructed almost exactly (distance ≈ 0) whatever
its size or position. The paper solves an ℓ1 (sparse) coding problem; this is the closed-form
ℓ2 (ridge) version FastReID's partial re-id project runs, with its λ = 0.001 as the default
and its normalisation: each spatial position is L2-normalised over channels. The residual of
unit features lies in [0, 1] (w = 0 already gives ‖x‖ = 1).

Cost: per gallery item, (YᵀY + λI)⁻¹ and YᵀY are computed once (float64 Cholesky) and reused
for every query; per pair, S = YᵀX (one large GEMM for a whole block of pairs), W = (YᵀY+λI)⁻¹S
and ‖x − Yw‖² = ‖x‖² − 2wᵀs + wᵀ(YᵀY)w, so no C-dimensional residual is ever formed. The
formula is the exact residual of the W actually computed, so rounding in the inverse costs
little. Precision: float64 inputs are computed in float64, anything else in float32, where a
near-zero residual can carry an absolute error up to about 1e-3 (the square root of the
rounding in ‖x‖² − 2wᵀs + wᵀGw; typically far less). Query × gallery blocks hold about
`BLOCK_ELEMENTS` numbers per intermediate; tensors stay on the device they came on (CUDA too).

Fusion follows FastReID's evaluator: (1 − w)·global + w·DSR. FastReID picks w by sweeping it
on the test set itself; here `choose_fusion_weight` (full matrices) and `choose_rerank_weight`
(a `TopKDsr`: the top-k re-scored once, fused at every weight tried) pick it on a validation
split.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from reid_core.evaluation.inputs import check_distances
from reid_core.evaluation.rank import evaluate_rank

BLOCK_ELEMENTS = 1 << 23  # numbers in each (pairs × N_g × N_q) intermediate; tests shrink it
DEFAULT_LAMBDA = 1e-3  # FastReID / Partial-Person-ReID ridge constant (kappa)

MapsLike = np.ndarray | torch.Tensor


def dsr_distance(q_maps: MapsLike, g_maps: MapsLike, lam: float = DEFAULT_LAMBDA) -> np.ndarray:
    """float32 (num_q × num_g) DSR distances between spatial feature maps.

    `q_maps` is (num_q, C, H, W) or (num_q, C, N); `g_maps` likewise, with the same C but any
    spatial size (a partial query usually has fewer positions than a holistic gallery image).
    Each position is L2-normalised over channels first; `lam` is the ridge constant λ > 0.
    Values lie in [0, 1]: 0 when every query position lies in the gallery item's span.
    """
    q, g, lam = _check_inputs(q_maps, g_maps, lam)
    num_q, num_g = len(q), len(g)
    dist = torch.empty((num_q, num_g), dtype=q.dtype, device=q.device)
    gb, qb = _block_sizes(num_q, num_g, q.shape[2], g.shape[2])
    for g0 in range(0, num_g, gb):
        y = F.normalize(g[g0 : g0 + gb], dim=1)
        inv, gram = _factorise(y, lam)  # once per gallery item, reused by every query block
        y_rows = y.transpose(1, 2).reshape(-1, y.shape[1])  # (gb·N_g, C)
        for q0 in range(0, num_q, qb):
            x = F.normalize(q[q0 : q0 + qb], dim=1)  # (qb, C, N_q)
            s = y_rows @ x.transpose(0, 1).reshape(x.shape[1], -1)  # one GEMM for the block
            s = s.view(len(y), y.shape[2], len(x), x.shape[2]).transpose(1, 2)  # (gb,qb,Ng,Nq)
            xsq = x.pow(2).sum(1)  # (qb, N_q)
            res = _mean_residual(s, inv[:, None], gram[:, None], xsq[None])  # (gb, qb)
            dist[q0 : q0 + len(x), g0 : g0 + len(y)] = res.t()
    return dist.float().cpu().numpy()


@dataclass(frozen=True)
class TopKDsr:
    """DSR distances of each query's `top` gallery items by global distance, computed once so
    that fusions at many weights (choosing one on validation data) cost no more DSR."""

    global_dist: np.ndarray  # (num_q, num_g) checked
    top: np.ndarray  # (num_q, k) gallery indices
    dsr: np.ndarray  # (num_q, k) DSR distance of each

    def fused(self, weight: float) -> np.ndarray:
        """The top-k get (1 − weight)·global + weight·DSR; every other item keeps its global
        order, shifted by a per-query constant so it ranks after all re-scored ones. For
        ranking (CMC/mAP) only: the shift makes values incomparable across queries. float32."""
        _check_weight(weight)
        dist, top = self.global_dist, self.top
        num_q, num_g = dist.shape
        rows = np.arange(num_q)[:, None]
        fused_top = (1.0 - weight) * dist[rows, top] + weight * self.dsr
        out = dist.astype(np.float64)
        if top.shape[1] < num_g:
            rest = np.ones(dist.shape, dtype=bool)
            rest[rows, top] = False
            rest_min = np.where(rest, out, np.inf).min(1)
            shift = np.maximum(fused_top.max(1) - rest_min, 0.0) + 1.0
            out += shift[:, None]
        out[rows, top] = fused_top
        return out.astype(np.float32)


def dsr_top_k(
    global_dist: np.ndarray,
    q_maps: MapsLike,
    g_maps: MapsLike,
    top_k: int,
    lam: float = DEFAULT_LAMBDA,
) -> TopKDsr:
    """DSR distance of each query to its `top_k` nearest gallery items by `global_dist`."""
    dist = check_distances(global_dist)
    q, g, lam = _check_inputs(q_maps, g_maps, lam)
    num_q, num_g = dist.shape
    if (num_q, num_g) != (len(q), len(g)):
        raise ValueError(
            f"global_dist has shape {dist.shape} but there are {len(q)} query and "
            f"{len(g)} gallery maps"
        )
    if top_k < 1:
        raise ValueError(f"top_k must be ≥ 1, got {top_k}")
    top_k = min(top_k, num_g)
    if top_k < num_g:
        top = np.argpartition(dist, top_k - 1, axis=1)[:, :top_k]
    else:
        top = np.ascontiguousarray(np.broadcast_to(np.arange(num_g), (num_q, num_g)))
    return TopKDsr(dist, top, _paired_dsr(q, g, top, lam))


def dsr_rerank(
    global_dist: np.ndarray,
    q_maps: MapsLike,
    g_maps: MapsLike,
    top_k: int,
    weight: float,
    lam: float = DEFAULT_LAMBDA,
) -> np.ndarray:
    """Re-score each query's `top_k` gallery items of `global_dist` with DSR (as FastReID
    does), fused at `weight`: `dsr_top_k(...).fused(weight)`."""
    _check_weight(weight)
    return dsr_top_k(global_dist, q_maps, g_maps, top_k, lam).fused(weight)


def choose_rerank_weight(
    val: TopKDsr,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    weights: Sequence[float] | np.ndarray | None = None,
) -> tuple[float, dict[float, float]]:
    """The weight of `val.fused` with the best mAP on a VALIDATION split, and the mAP of each
    weight tried; as `choose_fusion_weight`, never on the test split."""
    grid = _weight_grid(weights)
    scores = {
        float(w): evaluate_rank(val.fused(float(w)), q_pids, g_pids, q_camids, g_camids).mAP
        for w in grid
    }
    return _best(scores), scores


def fuse_distances(global_dist: np.ndarray, dsr_dist: np.ndarray, weight: float) -> np.ndarray:
    """(1 − weight)·global + weight·DSR, float32: FastReID's convention (weight in [0, 1])."""
    g, d = np.asarray(global_dist), np.asarray(dsr_dist)
    if g.shape != d.shape:
        raise ValueError(f"distance shapes do not match: {g.shape} vs {d.shape}")
    _check_weight(weight)
    return ((1.0 - weight) * g.astype(np.float64) + weight * d).astype(np.float32)


def choose_fusion_weight(
    global_dist_val: np.ndarray,
    dsr_dist_val: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    weights: Sequence[float] | np.ndarray | None = None,
) -> float:
    """The fusion weight of `fuse_distances` with the best mAP on a VALIDATION split.

    All arguments must come from a validation split (identities held out from training and
    disjoint from the test split); the chosen weight is then applied unchanged to the test
    split. Never call this on the test split: picking the weight on test data (as FastReID's
    partial re-id evaluator does) reports an optimistic, unreproducible score. `weights`
    defaults to 0, 0.05, …, 1; ties go to the smallest weight.
    """
    scores = {
        float(w): evaluate_rank(
            fuse_distances(global_dist_val, dsr_dist_val, float(w)),
            q_pids,
            g_pids,
            q_camids,
            g_camids,
        ).mAP
        for w in _weight_grid(weights)
    }
    return _best(scores)


def _weight_grid(weights: Sequence[float] | np.ndarray | None) -> np.ndarray:
    """0, 0.05, …, 1 by default; every weight checked."""
    # rounded: 0.35, not linspace's 0.35000000000000003, in records and logs
    grid = np.round(np.linspace(0.0, 1.0, 21), 6) if weights is None else np.asarray(weights)
    grid = grid.astype(np.float64)
    if grid.ndim != 1 or len(grid) == 0:
        raise ValueError(f"weights must be a non-empty 1-D sequence, got shape {grid.shape}")
    for w in grid:
        _check_weight(float(w))
    return grid


def _best(scores: dict[float, float]) -> float:
    """The weight with the best score; ties go to the smallest weight."""
    best = max(scores.values())
    return min(w for w, score in scores.items() if score == best)


def _check_weight(weight: float) -> None:
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"fusion weight must be in [0, 1], got {weight}")


def _check_inputs(
    q_maps: MapsLike, g_maps: MapsLike, lam: float
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Both sides as (n, C, N) tensors of one dtype on one device, or a clear ValueError."""
    if not (lam > 0 and math.isfinite(lam)):
        raise ValueError(f"regularisation lam must be a positive finite number, got {lam}")
    q, g = _as_maps("query", q_maps), _as_maps("gallery", g_maps)
    if q.shape[1] != g.shape[1]:
        raise ValueError(
            f"query and gallery maps have different channel counts: {q.shape[1]} vs "
            f"{g.shape[1]} (shapes {tuple(q.shape)} vs {tuple(g.shape)})"
        )
    if q.device != g.device:
        raise ValueError(f"query maps are on {q.device} but gallery maps on {g.device}")
    dtype = torch.float64 if torch.float64 in (q.dtype, g.dtype) else torch.float32
    return q.to(dtype), g.to(dtype), float(lam)


def _as_maps(side: str, maps: MapsLike) -> torch.Tensor:
    t = torch.as_tensor(maps)
    if t.ndim not in (3, 4):
        raise ValueError(
            f"{side} maps must be (n, C, H, W) or (n, C, N), got shape {tuple(t.shape)}"
        )
    if t.shape[0] == 0:
        raise ValueError(f"{side} is empty: no maps (shape {tuple(t.shape)})")
    t = t.flatten(2)
    if t.shape[1] == 0 or t.shape[2] == 0:
        raise ValueError(f"{side} maps have no channels or no positions: {tuple(t.shape)}")
    if t.dtype not in (torch.float32, torch.float64):
        t = t.float()
    bad = ~torch.isfinite(t).flatten(1).all(1)
    if bad.any():
        items = torch.nonzero(bad).flatten()[:5].tolist()
        raise ValueError(
            f"{side} maps contain NaN or inf in {int(bad.sum())} items (first: {items})"
        )
    return t


def _block_sizes(num_q: int, num_g: int, n_q: int, n_g: int) -> tuple[int, int]:
    """(gallery block, query block): about BLOCK_ELEMENTS numbers in a (pairs, N_g, N_q) block."""
    pairs = max(1, BLOCK_ELEMENTS // (n_q * n_g))
    gb = min(num_g, max(1, math.isqrt(pairs)))
    qb = min(num_q, max(1, pairs // gb))
    return gb, qb


def _factorise(y: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per gallery item: (YᵀY + λI)⁻¹ and YᵀY, each (b, N_g, N_g), in y's dtype.

    Done in float64 (Cholesky): cheap next to the per-pair work, and λ = 1e-3 makes the system
    ill-conditioned enough to matter in float32.
    """
    y64 = y.double()
    gram = y64.transpose(1, 2) @ y64
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    inv = torch.cholesky_inverse(torch.linalg.cholesky(gram + lam * eye))
    return inv.to(y.dtype), gram.to(y.dtype)


def _mean_residual(
    s: torch.Tensor, inv: torch.Tensor, gram: torch.Tensor, xsq: torch.Tensor
) -> torch.Tensor:
    """Mean over query positions of ‖x − Yw‖, w = inv·s, from s = Yᵀx alone (no C-dim work).

    s: (..., N_g, N_q); inv, gram: broadcastable to (..., N_g, N_g); xsq: (..., N_q) = ‖x‖².
    """
    w = inv @ s
    sq = xsq - 2.0 * (w * s).sum(-2) + (w * (gram @ w)).sum(-2)
    return sq.clamp_(min=0).sqrt_().mean(-1)


def _paired_dsr(q: torch.Tensor, g: torch.Tensor, top: np.ndarray, lam: float) -> np.ndarray:
    """DSR distance of query i to gallery items top[i, :], (num_q, k) float64.

    Pairs are grouped by gallery item, so each candidate gallery item is factorised once.
    """
    num_q, k = top.shape
    c, n_q, n_g = q.shape[1], q.shape[2], g.shape[2]
    # bound the gathered (pairs, C, N) maps and the (pairs, N_g, N_q) intermediates
    chunk = max(1, BLOCK_ELEMENTS // (max(c, n_q, n_g) * max(n_q, n_g)))
    g_idx = top.reshape(-1)
    order = np.argsort(g_idx, kind="stable")
    g_sorted = g_idx[order]
    q_sorted = torch.as_tensor(order // k, device=q.device)
    uniq = np.unique(g_sorted)
    res = torch.empty(len(order), dtype=q.dtype, device=q.device)
    for u0 in range(0, len(uniq), chunk):
        items = uniq[u0 : u0 + chunk]
        y_block = F.normalize(g[torch.as_tensor(items, device=g.device)], dim=1)
        inv, gram = _factorise(y_block, lam)  # once per candidate gallery item
        start, stop = np.searchsorted(g_sorted, [items[0], items[-1] + 1])
        local = torch.as_tensor(np.searchsorted(items, g_sorted[start:stop]), device=q.device)
        for p0 in range(0, stop - start, chunk):
            sel = local[p0 : p0 + chunk]
            qi = q_sorted[start + p0 : start + p0 + len(sel)]
            x = F.normalize(q[qi], dim=1)  # (p, C, N_q)
            s = y_block[sel].transpose(1, 2) @ x  # (p, N_g, N_q)
            res[start + p0 : start + p0 + len(sel)] = _mean_residual(
                s, inv[sel], gram[sel], x.pow(2).sum(1)
            )
    out = np.empty(len(order), dtype=np.float64)
    out[order] = res.double().cpu().numpy()
    return out.reshape(num_q, k)
