import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reid_core.evaluation import compute_distance, evaluate_rank
from tests.strategies import labelled_distances


def reference_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank):
    """The protocol written out query by query, straight from its definition."""
    cmc_hits = np.zeros(max_rank)
    aps, inps = [], []
    for i in range(len(q_pids)):
        order = np.argsort(dist[i], kind="stable")
        keep = ~((g_pids[order] == q_pids[i]) & (g_cams[order] == q_cams[i]))
        matches = (g_pids[order] == q_pids[i])[keep]
        if not matches.any():
            continue
        ranks = np.flatnonzero(matches)  # 0-based ranks of positives among kept items
        cmc_hits[ranks[0] :] += 1
        aps.append(np.mean([(k + 1) / (r + 1) for k, r in enumerate(ranks)]))
        inps.append(len(ranks) / (ranks[-1] + 1))
    n = len(aps)
    return cmc_hits / n, float(np.mean(aps)), float(np.mean(inps)), n


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_the_protocol_definition_on_random_data(seed):
    rng = np.random.default_rng(seed)
    num_q, num_g, ids, cams = 37, 211, 15, 4
    q_pids, g_pids = rng.integers(0, ids, num_q), rng.integers(0, ids, num_g)
    q_cams, g_cams = rng.integers(0, cams, num_q), rng.integers(0, cams, num_g)
    dist = rng.random((num_q, num_g)).astype(np.float32)
    result = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=20)
    cmc, mAP, mINP, n = reference_rank(dist, q_pids, g_pids, q_cams, g_cams, 20)
    assert result.num_valid == n
    np.testing.assert_allclose(result.cmc, cmc, atol=1e-12)
    assert result.mAP == pytest.approx(mAP, abs=1e-12)
    assert result.mINP == pytest.approx(mINP, abs=1e-12)


def test_same_camera_matches_are_removed_and_queries_without_positives_skipped():
    # Query 0's only same-pid gallery item is in its own camera: skipped.
    # Query 1 (pid 2, cam 0): a same-camera positive at rank 1 is ignored; the
    # cross-camera positive is then the second kept item.
    dist = np.array([[0.1, 0.2, 0.3, 0.4], [0.5, 0.1, 0.2, 0.3]])
    g_pids = np.array([1, 2, 3, 2])
    g_cams = np.array([0, 0, 1, 1])
    result = evaluate_rank(dist, np.array([1, 2]), g_pids, np.array([0, 0]), g_cams, max_rank=3)
    assert result.num_valid == 1
    np.testing.assert_allclose(result.cmc, [0.0, 1.0, 1.0])
    assert result.mAP == pytest.approx(0.5)
    assert result.mINP == pytest.approx(0.5)


def test_no_valid_query_is_an_error():
    with pytest.raises(ValueError, match="no query has a positive"):
        evaluate_rank(
            np.zeros((1, 2)), np.array([5]), np.array([1, 2]), np.array([0]), np.array([0, 1])
        )


def test_cosine_and_euclidean_distances():
    q = np.array([[1.0, 0.0], [0.0, 2.0]])
    g = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 4.0]])
    np.testing.assert_allclose(
        compute_distance(q, g, "cosine"), [[0.0, 1.0, 0.4], [1.0, 0.0, 0.2]], atol=1e-6
    )
    np.testing.assert_allclose(
        compute_distance(q, g, "euclidean"),
        [[1.0, np.sqrt(2), np.sqrt(20)], [np.sqrt(8), 1.0, np.sqrt(13)]],
        atol=1e-5,
    )
    with pytest.raises(ValueError, match="shapes"):
        compute_distance(q, np.zeros((2, 3)))


@given(labelled_distances(), st.integers(1, 60))
@settings(max_examples=300, deadline=None)
def test_matches_the_protocol_definition_on_any_problem(problem, max_rank):
    dist, q_pids, g_pids, q_cams, g_cams = problem
    max_rank = min(max_rank, dist.shape[1])
    if not any(((g_pids == p) & (g_cams != c)).any() for p, c in zip(q_pids, q_cams, strict=True)):
        with pytest.raises(ValueError, match="no query has a positive"):
            evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank)
        return
    result = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank)
    cmc, mAP, mINP, n = reference_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank)
    assert result.num_valid == n
    np.testing.assert_allclose(result.cmc, cmc, atol=1e-12)
    assert result.mAP == pytest.approx(mAP, abs=1e-12)
    assert result.mINP == pytest.approx(mINP, abs=1e-12)


@pytest.mark.parametrize(
    ("dist", "q", "g", "message"),
    [
        (np.zeros((2, 3)), 3, 3, "2 query items"),
        (np.zeros((2, 3)), 2, 4, "3 gallery items"),
        (np.zeros((2, 0)), 2, 0, "empty"),
        (np.array([[0.1, np.nan]]), 1, 2, "NaN"),
        (np.zeros(3), 1, 3, "2-D"),
    ],
)
def test_bad_inputs_are_clear_errors(dist, q, g, message):
    with pytest.raises(ValueError, match=message):
        evaluate_rank(dist, np.ones(q), np.ones(g), np.zeros(q), np.ones(g))


def test_metric_names_are_those_evaluate_writes_and_a_prefix_goes_before_each():
    from reid_core.evaluation import tar_at_far
    from reid_core.evaluation.protocol import EvaluationResult

    rng = np.random.default_rng(3)
    q_pids, g_pids = rng.integers(0, 8, 20), rng.integers(0, 8, 60)
    q_cams, g_cams = np.zeros(20, int), np.ones(60, int)
    dist = rng.random((20, 60))
    labels = (q_pids, g_pids, q_cams, g_cams)
    result = EvaluationResult(evaluate_rank(dist, *labels, 50), tar_at_far(dist, *labels, [0.01]))
    plain = result.as_metrics()
    assert set(plain) == {"mAP", "mINP", "num_valid_queries", "rank1", "rank5", "rank10",
                          "tar_at_far_0.01"}  # fmt: skip
    assert plain["rank1"] == result.rank.cmc[0] and plain["mAP"] == result.rank.mAP
    assert result.as_metrics("val_") == {f"val_{name}": v for name, v in plain.items()}
    without = EvaluationResult(result.rank).as_metrics("target_")  # training's: no verification
    assert without == {f"target_{name}": v for name, v in result.rank.as_metrics().items()}
    assert "target_tar_at_far_0.01" not in without
