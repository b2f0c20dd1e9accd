"""One pseudo-label round of unsupervised domain adaptation, as the adapt stage and KFP run it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from reid_core.data.splits import Split, contiguous_labels
from reid_core.engine.hooks import Hook
from reid_core.engine.trainer import LossFn, TrainData, fit
from reid_core.evaluation import extract_features
from reid_core.modeling.losses import ReidLoss
from reid_core.modeling.model import ReidModel
from reid_core.options import AdaptConfig
from reid_core.uda.memory import ClusterMemoryLoss, cluster_centroids
from reid_core.uda.pseudo_labels import cluster_features, label_quality, outliers_as_singletons


def pseudo_labels(
    model: ReidModel, target: Split, config: AdaptConfig, batch_size: int
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """(target features, DBSCAN labels with -1 for outliers, what the clustering found).

    Raises `PseudoLabelError` when the labels cannot be trained on. Pseudo-label quality
    (NMI, ARI, pair precision/recall) is measured against `target.pids` unless they are
    unknown (negative).
    """
    feats = extract_features(model, target.images, batch_size)
    labels = cluster_features(feats, config.eps, config.min_samples, config.k1, config.k2,
                              knn_backend=config.knn)  # fmt: skip
    found = {
        "clusters": float(len(np.unique(labels[labels >= 0]))),
        "outliers": float((labels < 0).sum()),
        "outlier_fraction": float((labels < 0).mean()),
    }
    if (target.pids >= 0).all():
        found["true_ids"] = float(len(np.unique(target.pids)))
        found.update({f"pseudo_{k}": v for k, v in label_quality(labels, target.pids).items()})
    return feats, labels, found


def training_set(target: Split, labels: np.ndarray, outliers: str) -> tuple[TrainData, np.ndarray]:
    """The target images with contiguous pseudo ids under the outlier policy, and which rows
    of `target` they are: "drop" leaves outliers out, "singletons" gives each its own id."""
    if outliers == "singletons":
        keep = np.arange(len(labels))
        ids = outliers_as_singletons(labels)
    else:
        keep = np.flatnonzero(labels >= 0)
        ids = labels[keep]
    data = TrainData(target.images[keep], contiguous_labels(ids), target.camids[keep])
    return data, keep


def round_loss(
    model: ReidModel, config: AdaptConfig, features: np.ndarray, data: TrainData
) -> LossFn:
    """The configured objective on this round's pseudo ids (the model gets a fresh classifier
    of as many classes either way, since margin classifiers read the labels)."""
    num_ids = int(data.labels.max()) + 1
    model.reset_classifier(num_ids)
    if config.objective == "ce":
        return ReidLoss(config.loss)
    metric_only = config.loss.model_copy(update={"ce_weight": 0.0, "focal_weight": 0.0})
    return ClusterMemoryLoss(
        cluster_centroids(features, data.labels),
        config.memory_temperature,
        config.memory_momentum,
        neck=model.config.neck_feat == "after",
        extra=ReidLoss(metric_only),
    )


def adapt_round(
    model: ReidModel,
    target: Split,
    config: AdaptConfig,
    round_index: int,
    batch_size: int,
    hooks: Sequence[Hook] = (),
    state_dir: str | Path | None = None,
) -> dict[str, float]:
    """Cluster the target features, then train `model` in place on the pseudo ids.

    Returns the clustering's figures. Raises `PseudoLabelError`, leaving `model` untouched,
    when the clustering gives nothing to train on.
    """
    features, labels, found = pseudo_labels(model, target, config, batch_size)
    data, keep = training_set(target, labels, config.outliers)
    solver = config.solver.model_copy(update={"seed": config.solver.seed + round_index})
    torch.manual_seed(solver.seed)  # the fresh classifier's initialisation
    loss = round_loss(model, config, features[keep], data)
    fit(model, data, solver, config.augment, loss, hooks, state_dir=state_dir)
    found["pseudo_ids_trained"] = float(int(data.labels.max()) + 1)
    return found
