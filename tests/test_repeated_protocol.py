"""VehicleID's protocol: a random one-image-per-identity gallery, repeated and averaged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reid_core.data.gallery_draws import gallery_draws
from reid_core.evaluation.repeated import evaluate_gallery_draws


def test_each_draw_has_one_gallery_image_per_identity_and_the_rest_as_queries():
    pids = np.repeat(np.arange(30), np.random.default_rng(0).integers(1, 7, 30))
    trials = gallery_draws(pids, repeats=5, seed=3)
    assert len(trials) == 5
    for trial in trials:
        assert sorted(pids[trial.gallery]) == list(range(30))
        assert np.intersect1d(trial.gallery, trial.query).size == 0
        assert np.union1d(trial.gallery, trial.query).tolist() == list(range(len(pids)))
    assert len({tuple(t.gallery) for t in trials}) > 1  # the draws differ
    again = gallery_draws(pids, repeats=5, seed=3)
    assert all((a.gallery == b.gallery).all() for a, b in zip(trials, again, strict=True))
    other = gallery_draws(pids, repeats=5, seed=4)
    assert any((a.gallery != b.gallery).any() for a, b in zip(trials, other, strict=True))


def test_every_image_of_an_identity_is_drawn_as_its_gallery_image_about_equally():
    pids = np.zeros(4, dtype=np.int64)
    drawn = np.bincount([t.gallery[0] for t in gallery_draws(pids, 4000, 0)], minlength=4)
    assert (abs(drawn - 1000) < 120).all(), drawn


def plain_reference(features: np.ndarray, pids: np.ndarray, trials) -> dict[str, float]:
    """Each query's one positive, found by sorting its cosine distances; averaged as the
    protocol says (rank-k hits; AP and INP are 1/rank of the single positive)."""
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    per_trial = []
    for trial in trials:
        ranks = []
        for q in trial.query:
            dist = 1 - unit[trial.gallery] @ unit[q]
            order = np.argsort(dist, kind="stable")
            ranks.append(int(np.flatnonzero(pids[trial.gallery][order] == pids[q])[0]) + 1)
        ranks = np.array(ranks)
        per_trial.append(
            {"rank1": np.mean(ranks <= 1), "rank5": np.mean(ranks <= 5), "mAP": np.mean(1 / ranks)}
        )
    return {
        **{k: float(np.mean([t[k] for t in per_trial])) for k in per_trial[0]},
        **{f"{k}_std": float(np.std([t[k] for t in per_trial])) for k in per_trial[0]},
    }


def test_the_averaged_figures_equal_a_plain_reference_with_no_camera_removal():
    rng = np.random.default_rng(1)
    pids = np.repeat(np.arange(40), 5)
    centres = rng.standard_normal((40, 16))
    features = (centres[pids] + 0.9 * rng.standard_normal((len(pids), 16))).astype(np.float32)
    trials = gallery_draws(pids, repeats=10, seed=0)
    result = evaluate_gallery_draws(torch.from_numpy(features), pids, trials).as_metrics()
    expected = plain_reference(features, pids, trials)
    for name, value in expected.items():
        assert result[name] == pytest.approx(value, abs=1e-6), name
    assert result["mINP"] == pytest.approx(expected["mAP"], abs=1e-6)  # one positive each
    assert result["num_valid_queries"] == len(pids) - 40  # no query lost to a camera rule
    assert result["rank1_std"] > 0 and result["rank1"] < 1


@pytest.mark.parametrize(
    ("pids", "repeats", "message"),
    [
        (np.array([], dtype=np.int64), 10, "non-empty"),
        (np.arange(5), 10, "no identity has two images"),
        (np.array([1, 1, 2]), 0, "repeats must be at least 1"),
    ],
)
def test_a_test_list_without_queries_or_repeats_is_refused(pids, repeats, message):
    with pytest.raises(ValueError, match=message):
        gallery_draws(pids, repeats)
