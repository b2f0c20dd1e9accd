"""VehicleID's split of a test list: one image of every identity drawn as the gallery, the rest
as queries; the protocol repeats the draw and averages (`reid_core.evaluation.repeated`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Trial:
    """One draw of the protocol: rows of the test list that are gallery, and the queries."""

    gallery: np.ndarray  # one row per identity
    query: np.ndarray  # every other row


def gallery_draws(pids: np.ndarray, repeats: int = 10, seed: int = 0) -> list[Trial]:
    """`repeats` trials of a test list's `pids`: in each, one row of every identity, drawn
    uniformly with a generator seeded by `seed`, is the gallery; the other rows are queries."""
    pids = np.asarray(pids)
    if pids.ndim != 1 or len(pids) == 0:
        raise ValueError(f"pids must be a non-empty 1-D array, got shape {pids.shape}")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    order = np.argsort(pids, kind="stable")
    _, starts, counts = np.unique(pids[order], return_index=True, return_counts=True)
    if (counts < 2).all():
        raise ValueError("no identity has two images: there would be no queries")
    rng = np.random.default_rng(seed)
    trials = []
    for _ in range(repeats):
        picked = order[starts + rng.integers(0, counts)]  # one row per identity
        is_gallery = np.zeros(len(pids), dtype=bool)
        is_gallery[picked] = True
        trials.append(Trial(np.sort(picked), np.flatnonzero(~is_gallery)))
    return trials
