"""Validation of evaluation inputs and the per-identity index of the gallery."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reid_core.data.cameras import NO_CAMERA, protocol_cameras


def check_distances(distmat: np.ndarray) -> np.ndarray:
    """A C-contiguous float32/float64 query × gallery matrix without NaN, or a clear error."""
    dist = np.asarray(distmat)
    if dist.ndim != 2:
        raise ValueError(f"distmat must be 2-D (queries × gallery), got shape {dist.shape}")
    if 0 in dist.shape:
        raise ValueError(f"distmat is empty: shape {dist.shape}")
    if dist.dtype not in (np.float32, np.float64):
        dist = dist.astype(np.float64)
    if np.isnan(dist.min()):  # min propagates NaN: one pass, no N×M mask on the good path
        rows = np.flatnonzero(np.isnan(dist).any(1))
        raise ValueError(f"distmat has NaN in {len(rows)} query rows (first: {rows[:5].tolist()})")
    return np.ascontiguousarray(dist)


def check_labels(
    side: str, n: int, pids: np.ndarray, camids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """int64 pids and camids of the `side` ("query" or "gallery") of an n-item axis; unknown
    cameras come back recoded so that `==` between the two sides means `same_camera`."""
    pids, camids = np.asarray(pids, np.int64), np.asarray(camids, np.int64)
    if pids.shape != (n,) or camids.shape != (n,):
        raise ValueError(
            f"distmat has {n} {side} items but {side} pids/camids have shapes "
            f"{pids.shape}/{camids.shape}"
        )
    if camids.size and camids.min() < NO_CAMERA:
        raise ValueError(f"{side} camids must be >= {NO_CAMERA} (unknown), got {camids.min()}")
    return pids, protocol_cameras(side, camids)


@dataclass(frozen=True)
class PidIndex:
    """Compact pids, and each pid's gallery items: `members[start[p]:start[p + 1]]`."""

    q_ids: np.ndarray
    g_ids: np.ndarray
    start: np.ndarray
    members: np.ndarray

    @property
    def max_members(self) -> int:
        return max(1, int(np.diff(self.start).max()))


def pid_index(q_pids: np.ndarray, g_pids: np.ndarray) -> PidIndex:
    ids, compact = np.unique(np.concatenate([q_pids, g_pids]), return_inverse=True)
    q_ids, g_ids = compact[: len(q_pids)], compact[len(q_pids) :]
    members = np.argsort(g_ids, kind="stable")
    start = np.searchsorted(g_ids[members], np.arange(len(ids) + 1))
    return PidIndex(
        q_ids.astype(np.int64),
        g_ids.astype(np.int64),
        start.astype(np.int64),
        members.astype(np.int64),
    )
