import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import labelled_distances

from reid_core.evaluation import compute_distance, evaluate_rank
from reid_core.evaluation.large_gallery import evaluate_features, evaluate_topk


def reference_topk(indices, q_pids, g_pids, q_cams, g_cams):
    """AP over a truncated list and CMC of it, per query, from the definition."""
    aps, first = [], []
    for i, row in enumerate(indices):
        junk = (g_pids == q_pids[i]) & (g_cams == q_cams[i])
        positives = ((g_pids == q_pids[i]) & ~junk).sum()
        if positives == 0:
            continue
        kept = [g for g in row if not junk[g]]
        hits = [g_pids[g] == q_pids[i] for g in kept]
        precision = [np.mean(hits[: r + 1]) for r in range(len(hits)) if hits[r]]
        aps.append(sum(precision) / positives)
        first.append(hits.index(True) + 1 if any(hits) else np.inf)
    k = indices.shape[1]
    return np.mean(aps), np.array([np.mean(np.array(first) <= r) for r in range(1, k + 1)])


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_streamed_evaluation_equals_the_dense_one(monkeypatch, metric):
    from reid_core.evaluation import distance

    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(37, 8)), rng.normal(size=(120, 8))
    labels = (rng.integers(0, 9, 37), rng.integers(0, 9, 120))
    cams = (rng.integers(0, 3, 37), rng.integers(0, 3, 120))
    dense = evaluate_rank(compute_distance(q, g, metric), *labels, *cams, max_rank=20)
    monkeypatch.setattr(distance, "BLOCK_ELEMENTS", 1000)  # blocks of 8 query rows
    streamed = evaluate_features(q, g, *labels, *cams, metric=metric, max_rank=20)
    np.testing.assert_array_equal(streamed.cmc, dense.cmc)
    np.testing.assert_allclose(streamed.all_ap, dense.all_ap, atol=1e-12)
    assert streamed.mINP == pytest.approx(dense.mINP) and streamed.num_valid == dense.num_valid


@given(labelled_distances(), st.integers(1, 50))
@settings(max_examples=200, deadline=None)
def test_top_k_metrics_match_their_definition(problem, k):
    dist, q_pids, g_pids, q_cams, g_cams = problem
    if not any(((g_pids == p) & (g_cams != c)).any() for p, c in zip(q_pids, q_cams, strict=True)):
        with pytest.raises(ValueError, match="no query has a positive"):
            evaluate_topk(np.zeros((len(q_pids), 1), int), q_pids, g_pids, q_cams, g_cams)
        return
    indices = np.argsort(dist, axis=1, kind="stable")[:, :k]
    result = evaluate_topk(indices, q_pids, g_pids, q_cams, g_cams)
    expected_map, expected_cmc = reference_topk(indices, q_pids, g_pids, q_cams, g_cams)
    assert result.mAP_at_k == pytest.approx(expected_map, abs=1e-12)
    np.testing.assert_allclose(result.cmc, expected_cmc)
    full = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=len(g_pids))
    assert result.mAP_at_k <= full.mAP + 1e-12  # a lower bound ...
    if k >= len(g_pids):  # ... that is the full metric when nothing is cut off
        assert result.complete == 1.0
        assert result.mAP_at_k == pytest.approx(full.mAP, abs=1e-12)
        np.testing.assert_allclose(result.cmc[: len(full.cmc)], full.cmc)


def test_top_k_metrics_are_labelled_truncated():
    g_pids, g_cams = np.array([1, 1, 2, 1]), np.array([1, 2, 1, 3])
    result = evaluate_topk(np.array([[1, 0, 2]]), np.array([1]), g_pids, np.array([1]), g_cams)
    # kept list: g1 (hit), g2 (miss); g0 is junk; g3, a positive, lies beyond the list
    assert result.mAP_at_k == pytest.approx(0.5)
    assert result.complete == 0.0
    assert set(result.as_metrics()) == {"mAP_at_3", "complete_at_3", "num_valid_queries", "rank1"}
    assert result.as_metrics("val_") == {f"val_{k}": v for k, v in result.as_metrics().items()}


@pytest.mark.parametrize(
    ("indices", "message"),
    [
        (np.zeros((2, 0), int), "non-empty"),
        (np.array([[0, 9], [1, 2]]), "gallery"),
        (np.zeros((3, 2), int), "query items"),
    ],
)
def test_bad_top_k_lists_are_clear_errors(indices, message):
    with pytest.raises(ValueError, match=message):
        evaluate_topk(indices, np.array([1, 2]), np.arange(4), np.zeros(2), np.ones(4))
