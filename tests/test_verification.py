import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reid_core.evaluation import tar_at_far
from tests.strategies import labelled_distances

FARS = (1e-3, 0.05, 0.3, 1.0)


def reference_tar(dist, q_pids, g_pids, q_cams, g_cams, fars):
    """All pairs, all negatives sorted: the definition, without any cleverness."""
    same = q_pids[:, None] == g_pids[None, :]
    other_cam = q_cams[:, None] != g_cams[None, :]
    positives = dist[same & other_cam]
    negatives = np.sort(dist[~same])
    out = {}
    for far in fars:
        k = int(far * len(negatives))
        threshold = negatives[k] if k < len(negatives) else np.inf
        out[far] = float((positives < threshold).mean())
    return out


@given(labelled_distances(max_q=10, max_g=50, min_g=2, min_ids=2), st.sampled_from([16, 1 << 16]))
@settings(max_examples=200, deadline=None)
def test_tar_matches_the_definition_on_any_problem(problem, bins):
    dist, q_pids, g_pids, q_cams, g_cams = problem
    same = q_pids[:, None] == g_pids[None, :]
    has_pos = (same & (q_cams[:, None] != g_cams[None, :])).any()
    if not has_pos or same.all():
        with pytest.raises(ValueError, match="need both"):
            tar_at_far(dist, q_pids, g_pids, q_cams, g_cams, FARS, bins=bins)
        return
    result = tar_at_far(dist, q_pids, g_pids, q_cams, g_cams, FARS, bins=bins)
    assert result.tar == reference_tar(dist, q_pids, g_pids, q_cams, g_cams, FARS)


def test_perfect_separation_gives_full_tar_and_a_monotone_roc():
    rng = np.random.default_rng(0)
    q_pids, g_pids = np.arange(20), np.repeat(np.arange(20), 5)
    q_cams, g_cams = np.zeros(20, int), np.ones(100, int)
    same = q_pids[:, None] == g_pids[None, :]
    dist = np.where(same, rng.random((20, 100)) * 0.1, 0.5 + rng.random((20, 100)))
    result = tar_at_far(dist, q_pids, g_pids, q_cams, g_cams, fars=(1e-3, 1e-2))
    assert result.tar == {1e-3: 1.0, 1e-2: 1.0}
    assert result.num_positive_pairs == 100 and result.num_negative_pairs == 1900
    assert np.all(np.diff(result.roc_far) >= 0) and np.all(np.diff(result.roc_tar) >= 0)
    assert result.roc_far[-1] == 1.0 and result.roc_tar[-1] == 1.0
    assert set(result.as_metrics()) == {"tar_at_far_0.001", "tar_at_far_0.01"}


def test_a_far_outside_0_1_is_rejected():
    dist = np.zeros((1, 2))
    with pytest.raises(ValueError, match="FARs"):
        tar_at_far(dist, np.array([1]), np.array([1, 2]), np.array([0]), np.array([1, 1]), (0.0,))
