"""Protocols that draw their gallery at random and average over repeats: VehicleID's.

VehicleID's test lists (800, 1,600 and 2,400 identities) have no fixed query and gallery: each
trial draws one image of every identity as the gallery and makes the rest queries, and the
figures are averaged over the trials (10 in the literature). The dataset has no camera ids, so
no gallery image is removed for sharing the query's camera: every query has exactly one
positive, its identity's gallery image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from reid_core.evaluation.distance import compute_distance
from reid_core.evaluation.rank import RankResult, evaluate_rank


@dataclass(frozen=True)
class Trial:
    """One draw of the protocol: rows of the test list that are gallery, and the queries."""

    gallery: np.ndarray  # one row per identity
    query: np.ndarray  # every other row


@dataclass(frozen=True)
class RepeatedResult:
    """Each trial's result, and their mean and spread."""

    trials: list[RankResult]

    def as_metrics(self, prefix: str = "") -> dict[str, float]:
        """The trials' mean of each of `RankResult.as_metrics`, and its standard deviation
        as `<name>_std` (population: the spread of these trials)."""
        per_trial = [trial.as_metrics() for trial in self.trials]
        out: dict[str, float] = {}
        for name in per_trial[0]:
            values = np.array([metrics[name] for metrics in per_trial])
            out[f"{prefix}{name}"] = float(values.mean())
            out[f"{prefix}{name}_std"] = float(values.std())
        return out


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


def evaluate_gallery_draws(
    features: np.ndarray | torch.Tensor,
    pids: np.ndarray,
    trials: list[Trial],
    metric: str = "cosine",
    max_rank: int = 50,
) -> RepeatedResult:
    """CMC, mAP and mINP of every trial over a test list's features (rows aligned with
    `pids`), with no camera removal; query × gallery distances are computed per trial."""
    pids = np.asarray(pids)
    if len(features) != len(pids):
        raise ValueError(f"{len(features)} feature rows for {len(pids)} pids")
    results = []
    for trial in trials:
        dist = compute_distance(features[trial.query], features[trial.gallery], metric)
        # cameras that never coincide: no gallery item is removed for its camera
        q_cams = np.zeros(len(trial.query), dtype=np.int64)
        g_cams = np.ones(len(trial.gallery), dtype=np.int64)
        rank = min(max_rank, len(trial.gallery))
        results.append(
            evaluate_rank(dist, pids[trial.query], pids[trial.gallery], q_cams, g_cams, rank)
        )
    return RepeatedResult(results)
