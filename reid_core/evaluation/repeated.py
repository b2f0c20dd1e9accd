"""Protocols that draw their gallery at random and average over repeats: VehicleID's.

VehicleID's test lists (800, 1,600 and 2,400 identities) have no fixed query and gallery: each
trial draws one image of every identity as the gallery and makes the rest queries, and the
figures are averaged over the trials (10 in the literature). The dataset has no camera ids, so
no gallery image is removed for sharing the query's camera: every query has exactly one
positive, its identity's gallery image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from reid_core.data.cameras import NO_CAMERA
from reid_core.data.gallery_draws import Trial
from reid_core.evaluation.distance import compute_distance
from reid_core.evaluation.rank import evaluate_rank


class Scored(Protocol):
    """A result that names its metrics: RankResult, EvaluationResult."""

    def as_metrics(self, prefix: str = "") -> dict[str, float]: ...


@dataclass(frozen=True)
class RepeatedResult:
    """Each trial's result, and their mean and spread."""

    trials: Sequence[Scored]

    def as_metrics(self, prefix: str = "") -> dict[str, float]:
        """The trials' mean of each of their `as_metrics`, and its standard deviation as
        `<name>_std` (population: the spread of these trials)."""
        per_trial = [trial.as_metrics() for trial in self.trials]
        out: dict[str, float] = {}
        for name in per_trial[0]:
            values = np.array([metrics[name] for metrics in per_trial])
            out[f"{prefix}{name}"] = float(values.mean())
            out[f"{prefix}{name}_std"] = float(values.std())
        return out


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
        q_cams = np.full(len(trial.query), NO_CAMERA)
        g_cams = np.full(len(trial.gallery), NO_CAMERA)
        rank = min(max_rank, len(trial.gallery))
        results.append(
            evaluate_rank(dist, pids[trial.query], pids[trial.gallery], q_cams, g_cams, rank)
        )
    return RepeatedResult(results)
