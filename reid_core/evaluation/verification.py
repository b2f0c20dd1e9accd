"""Verification over all query–gallery pairs: TAR at given FARs, and the ROC curve.

Pairs follow the rank protocol: a same-pid pair from the same camera is removed; the other
same-pid pairs are positives, every different-pid pair is a negative. A pair is accepted when
its distance is below a threshold. For each FAR the threshold is the k-th smallest negative
distance, k = ⌊FAR · negatives⌋, so at most that share of negatives is accepted; TAR is the
share of positives accepted there. Selection is exact and never sorts or gathers all pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from reid_core.data.cameras import same_camera
from reid_core.evaluation.inputs import PidIndex, check_distances, check_labels, pid_index

ROC_POINTS = 2000


@dataclass(frozen=True)
class VerificationResult:
    tar: dict[float, float]  # FAR → TAR
    thresholds: dict[float, float]  # FAR → distance threshold (accept d < threshold)
    roc_far: np.ndarray  # for plotting: false accept rate at each threshold (ascending)
    roc_tar: np.ndarray
    roc_thresholds: np.ndarray
    num_positive_pairs: int
    num_negative_pairs: int

    def as_metrics(self, prefix: str = "") -> dict[str, float]:
        """Names valid in MLflow (which rejects '@' and '='), e.g. `tar_at_far_0.0001`, each
        after `prefix`."""
        return {f"{prefix}tar_at_far_{far:g}": value for far, value in self.tar.items()}


def tar_at_far(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    fars: Sequence[float] = (1e-4, 1e-3, 1e-2),
    bins: int = 1 << 16,
) -> VerificationResult:
    """TAR at each FAR (exact), with a ROC curve resolved to `bins` distance bins."""
    import numba

    from reid_core.evaluation.kernels import negative_histogram, negatives_in_bins

    dist = check_distances(distmat)
    num_q, num_g = dist.shape
    q_pids, q_camids = check_labels("query", num_q, q_pids, q_camids)
    g_pids, g_camids = check_labels("gallery", num_g, g_pids, g_camids)
    if any(not 0 < far <= 1 for far in fars):
        raise ValueError(f"FARs must lie in (0, 1], got {list(fars)}")
    index = pid_index(q_pids, g_pids)

    positives = np.sort(positive_distances(dist, index, q_camids, g_camids))
    num_neg = num_q * num_g - int(np.diff(index.start)[index.q_ids].sum())
    if len(positives) == 0 or num_neg == 0:
        raise ValueError(f"{len(positives)} positive and {num_neg} negative pairs: need both")

    lo, hi = float(dist.min()), float(dist.max())
    scale = bins / (hi - lo) if hi > lo else 0.0
    chunks = 4 * numba.get_num_threads()
    per_chunk = negative_histogram(
        dist, index.q_ids, index.start, index.members, lo, scale, bins, chunks
    )
    cumulative = per_chunk.sum(0).cumsum()

    kth = {far: int(far * num_neg) for far in fars}
    bin_of = {far: int(np.searchsorted(cumulative, k, side="right")) for far, k in kth.items()}
    wanted = np.zeros(bins, bool)
    wanted[[b for b in bin_of.values() if b < bins]] = True
    offsets = np.concatenate([[0], per_chunk[:, wanted].sum(1).cumsum()]).astype(np.int64)
    in_bins = negatives_in_bins(
        dist, index.q_ids, index.g_ids, lo, scale, bins, wanted, offsets, chunks
    )
    in_bins_bin = _bins(in_bins, lo, scale, bins)

    tar, thresholds = {}, {}
    for far, k in kth.items():
        b = bin_of[far]
        if b >= bins:  # k ≥ number of negatives: everything may be accepted
            threshold = np.inf
        else:
            candidates = in_bins[in_bins_bin == b]
            below = int(cumulative[b - 1]) if b > 0 else 0
            threshold = float(np.partition(candidates, k - below)[k - below])
        thresholds[far] = threshold
        tar[far] = float(np.searchsorted(positives, threshold, side="left") / len(positives))

    edges = lo + (np.arange(1, bins + 1) / scale if scale else np.zeros(bins))
    keep = np.flatnonzero(np.diff(cumulative, prepend=0))
    keep = keep[np.linspace(0, len(keep) - 1, min(ROC_POINTS, len(keep))).astype(int)]
    return VerificationResult(
        tar=tar,
        thresholds=thresholds,
        roc_far=cumulative[keep] / num_neg,
        roc_tar=np.searchsorted(positives, edges[keep], side="left") / len(positives),
        roc_thresholds=edges[keep],
        num_positive_pairs=len(positives),
        num_negative_pairs=num_neg,
    )


def _bins(values: np.ndarray, lo: float, scale: float, bins: int) -> np.ndarray:
    """The kernels' binning, in float64 as they compute it."""
    return np.clip(((values.astype(np.float64) - lo) * scale).astype(np.int64), 0, bins - 1)


def positive_distances(
    dist: np.ndarray, index: PidIndex, q_camids: np.ndarray, g_camids: np.ndarray
) -> np.ndarray:
    """Distances of every same-pid pair not from one known camera (few: gathered directly)."""
    counts = np.diff(index.start)[index.q_ids]
    rows = np.repeat(np.arange(len(counts)), counts)
    row_start = np.concatenate([[0], counts.cumsum()[:-1]])  # where each query's pairs begin
    shift = np.repeat(index.start[index.q_ids] - row_start, counts)
    cols = index.members[shift + np.arange(counts.sum())]
    other_camera = ~same_camera(q_camids[rows], g_camids[cols])
    return dist[rows[other_camera], cols[other_camera]]
