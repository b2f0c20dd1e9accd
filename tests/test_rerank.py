import numpy as np
import pytest

from reid_core.evaluation.rerank import re_rank


def dense_re_rank(q, g, k1, k2, lam, metric):
    """The published algorithm on dense all-items matrices, written from its definition."""
    x = np.concatenate([q, g]).astype(np.float64)
    if metric == "cosine":
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        d2 = (1.0 - x @ x.T) ** 2
    else:
        sq = (x**2).sum(1)
        d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0)
    n, nq = len(x), len(q)
    dist = d2 / d2.max(1, keepdims=True)
    rank = np.argsort(dist, axis=1, kind="stable")

    def reciprocal(i, k):
        forward = rank[i, : k + 1]
        return forward[[i in rank[j, : k + 1] for j in forward]]

    v = np.zeros((n, n))
    for i in range(n):
        r = reciprocal(i, k1)
        expanded = set(r.tolist())
        for c in r:
            rc = reciprocal(c, int(np.round(k1 / 2)))
            if len(np.intersect1d(rc, r)) > 2 / 3 * len(rc):
                expanded |= set(rc.tolist())
        idx = np.array(sorted(expanded))
        w = np.exp(-dist[i, idx])
        v[i, idx] = w / w.sum()
    if k2 > 1:
        v = np.stack([v[rank[i, :k2]].mean(0) for i in range(n)])
    shared = np.array([[np.minimum(v[i], v[j]).sum() for j in range(n)] for i in range(nq)])
    jaccard = 1 - shared / (2 - shared)
    return ((1 - lam) * jaccard + lam * dist[:nq])[:, nq:]


@pytest.mark.parametrize(
    ("k1", "k2", "lam", "metric"),
    [
        (20, 6, 0.3, "euclidean"),
        (6, 3, 0.3, "euclidean"),
        (8, 1, 0.0, "cosine"),
        (4, 2, 1.0, "cosine"),
    ],
)
@pytest.mark.parametrize("knn_backend", ["torch", "faiss"])
def test_matches_the_dense_published_algorithm(k1, k2, lam, metric, knn_backend):
    rng = np.random.default_rng(k1 + k2)
    centres = rng.normal(size=(8, 16))
    q = centres[rng.integers(0, 8, 15)] + 0.5 * rng.normal(size=(15, 16))
    g = centres[rng.integers(0, 8, 50)] + 0.5 * rng.normal(size=(50, 16))
    ours = re_rank(q.astype(np.float32), g.astype(np.float32), k1, k2, lam, metric, knn_backend)
    expected = dense_re_rank(q, g, k1, k2, lam, metric)
    assert ours.shape == (15, 50) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_re_ranking_pulls_neighbourhood_matches_forward():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(10, 32)) * 3
    ids_q, ids_g = np.arange(10), np.repeat(np.arange(10), 6)
    q = centres[ids_q] + rng.normal(size=(10, 32))
    g = centres[ids_g] + rng.normal(size=(60, 32))
    dist = re_rank(q, g)
    nearest = ids_g[dist.argmin(1)]
    assert (nearest == ids_q).mean() == 1.0


@pytest.mark.parametrize(
    ("q", "g", "kwargs", "message"),
    [
        (np.zeros((2, 3)), np.zeros((4, 5)), {}, "shapes"),
        (np.zeros((0, 3)), np.zeros((4, 3)), {}, "need queries"),
        (np.zeros((2, 3)), np.zeros((0, 3)), {}, "need gallery"),
        (np.full((2, 3), np.nan), np.zeros((4, 3)), {}, "NaN"),
        (np.zeros((2, 3)), np.zeros((4, 3)), {"lambda_value": 2.0}, "λ"),
        (np.zeros((2, 3)), np.zeros((4, 3)), {"metric": "manhattan"}, "metric"),
    ],
)
def test_bad_inputs_are_clear_errors(q, g, kwargs, message):
    with pytest.raises(ValueError, match=message):
        re_rank(q, g, **kwargs)


@pytest.mark.parametrize("block_rows", [5, 37])  # narrower and wider than the scan lanes
def test_blocked_neighbour_search_gives_the_same_matrix(monkeypatch, block_rows):
    from reid_core.evaluation import memory, neighbours

    rng = np.random.default_rng(3)
    q = rng.normal(size=(13, 8)).astype(np.float32)
    g = rng.normal(size=(90, 8)).astype(np.float32)
    expected = dense_re_rank(q, g, 6, 3, 0.3, "euclidean")
    monkeypatch.setattr(neighbours, "BLOCK_ROWS", block_rows)  # edges inside queries and gallery
    monkeypatch.setattr(memory, "PREFAULT_MIN_BYTES", 0)  # the output from a populated mapping
    ours = re_rank(q, g, 6, 3, 0.3)
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    assert ours.flags.writeable


@pytest.mark.parametrize(
    ("lam", "metric", "block_rows", "knn_backend"),
    [
        (0.3, "euclidean", 2048, "torch"),
        (1.0, "cosine", 37, "torch"),
        (0.1, "cosine", 64, "torch"),
        (0.3, "euclidean", 2048, "faiss"),
        (0.1, "cosine", 2048, "faiss"),
    ],
)
def test_top_k_mode_gives_the_dense_re_ranked_top_k(
    monkeypatch, lam, metric, block_rows, knn_backend
):
    from reid_core.evaluation import neighbours
    from reid_core.evaluation.rerank import re_rank_topk

    rng = np.random.default_rng(5)
    centres = rng.normal(size=(12, 16))
    q = (centres[rng.integers(0, 12, 14)] + 0.6 * rng.normal(size=(14, 16))).astype(np.float32)
    g = (centres[rng.integers(0, 12, 150)] + 0.6 * rng.normal(size=(150, 16))).astype(np.float32)
    dense = re_rank(q, g, 8, 3, lam, metric)
    monkeypatch.setattr(neighbours, "BLOCK_ROWS", block_rows)
    indices, distances = re_rank_topk(q, g, 10, 8, 3, lam, metric, knn_backend)
    assert indices.shape == distances.shape == (14, 10) and distances.dtype == np.float32
    np.testing.assert_array_equal(indices, np.argsort(dense, axis=1, kind="stable")[:, :10])
    np.testing.assert_allclose(distances, np.take_along_axis(dense, indices, 1), atol=1e-5)


def test_top_k_larger_than_the_gallery_ranks_the_whole_gallery():
    from reid_core.evaluation.rerank import re_rank_topk

    rng = np.random.default_rng(6)
    q, g = rng.normal(size=(3, 4)), rng.normal(size=(9, 4))
    indices, _ = re_rank_topk(q, g, top_k=50, k1=4, k2=2)
    assert indices.shape == (3, 9)
    np.testing.assert_array_equal(indices, np.argsort(re_rank(q, g, 4, 2), 1, kind="stable"))
    with pytest.raises(ValueError, match="top_k"):
        re_rank_topk(q, g, top_k=0)


def test_unknown_neighbour_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="backend 'annoy'"):
        re_rank(np.zeros((2, 3)), np.ones((4, 3)), knn_backend="annoy")
