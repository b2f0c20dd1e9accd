import numpy as np
import pytest

from reid_core.evaluation.rerank import jaccard_distance
from reid_core.uda.pseudo_labels import (
    PseudoLabelError,
    cluster_features,
    label_quality,
    outliers_as_singletons,
)


def blobs(num_ids=5, per_id=6, dim=16, spread=0.05, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_ids, dim))
    ids = np.repeat(np.arange(num_ids), per_id)
    return centres[ids] + spread * rng.normal(size=(len(ids), dim)), ids


def test_separable_identities_are_recovered():
    feats, ids = blobs()
    labels = cluster_features(feats, eps=0.6, min_samples=3, k1=5, k2=2)
    quality = label_quality(labels, ids)
    assert quality["nmi"] == pytest.approx(1.0) and quality["ari"] == pytest.approx(1.0)
    assert quality["pair_precision"] == 1.0 and quality["pair_recall"] == 1.0


def test_all_outliers_and_collapse_are_clear_errors():
    feats, _ = blobs()
    with pytest.raises(PseudoLabelError, match="outlier"):
        cluster_features(feats, eps=1e-9, min_samples=3, k1=5, k2=2)
    with pytest.raises(PseudoLabelError, match="one cluster"):
        cluster_features(feats, eps=0.99, min_samples=3, k1=29, k2=6)
    with pytest.raises(PseudoLabelError, match="nothing to cluster"):
        cluster_features(np.zeros((0, 4)), eps=0.5, min_samples=2)


def test_outliers_can_be_kept_as_singletons():
    labels = outliers_as_singletons(np.array([0, -1, 1, -1]))
    assert labels.tolist() == [0, 2, 1, 3]


def test_merged_identities_lower_precision_not_recall():
    ids = np.array([0, 0, 1, 1])
    quality = label_quality(np.array([0, 0, 0, 0]), ids)
    assert quality["pair_recall"] == 1.0 and quality["pair_precision"] == pytest.approx(2 / 6)


def test_jaccard_distance_separates_identities_whatever_the_feature_scale():
    feats, ids = blobs()
    same = ids[:, None] == ids[None, :]
    for scale in (1.0, 1000.0):
        dist = jaccard_distance(feats * scale, k1=5, k2=2)
        assert dist.shape == (30, 30) and np.all(np.diag(dist) == 0)
        assert dist[same].max() < 0.1 and dist[~same].min() > 0.9
