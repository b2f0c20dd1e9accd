import threading

import numpy as np
import psutil
import pytest
from sklearn.cluster import DBSCAN

from reid_core.evaluation.rerank import jaccard_distance, jaccard_neighbours
from reid_core.uda.pseudo_labels import cluster_features


def clustered(num_ids=25, per_id=12, dim=32, spread=0.6, seed=0):
    """Identities as centres plus noise, with exact duplicates (ties in every neighbour list)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_ids, dim))
    ids = np.repeat(np.arange(num_ids), per_id)
    feats = centres[ids] + spread * rng.normal(size=(len(ids), dim))
    feats[[5, 6, 7]] = feats[4]
    feats[100] = feats[101]
    return feats.astype(np.float32)


def stored_mask(sparse):
    mask = sparse.copy()
    mask.data[:] = 1.0
    return mask.toarray().astype(bool)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize(("k1", "k2", "cutoff"), [(20, 6, 1.0), (20, 6, 0.6), (8, 1, 0.85)])
def test_sparse_matrix_holds_the_dense_distances_below_the_cutoff(metric, k1, k2, cutoff):
    feats = clustered()
    dense = jaccard_distance(feats, k1, k2, metric)
    sparse = jaccard_neighbours(feats, k1, k2, metric, max_distance=cutoff)
    assert sparse.format == "csr" and sparse.shape == dense.shape and sparse.dtype == np.float32
    stored = stored_mask(sparse)
    assert stored.diagonal().all() and (sparse.diagonal() == 0).all()
    np.testing.assert_array_equal(sparse.toarray()[stored], dense[stored])
    off_diagonal = ~np.eye(len(feats), dtype=bool)
    assert (dense[stored & off_diagonal] < cutoff).all()
    assert (dense[~stored] >= cutoff).all()
    assert (stored == stored.T).all() and (sparse != sparse.T).nnz == 0
    rows = np.split(sparse.indices, sparse.indptr[1:-1])
    assert all((np.diff(row) > 0).all() for row in rows)
    assert (sparse.data >= 0).all() and (sparse.data <= 1).all()
    if cutoff == 1.0:  # every pair sharing a neighbour: the rest are exactly 1
        assert (dense[~stored] == 1.0).all()
    else:  # the cutoff drops pairs the sharing alone keeps
        assert stored.sum() < stored_mask(jaccard_neighbours(feats, k1, k2, metric)).sum()


def test_dbscan_finds_the_same_clusters_on_the_sparse_matrix_as_on_the_dense_one():
    feats = clustered(num_ids=30, per_id=10, spread=0.9, seed=1)
    dense = jaccard_distance(feats, 20, 6, "cosine")
    smallest = float(np.unique(dense[dense > 0])[0])  # d < eps would lose these
    for eps, min_samples in [(0.3, 4), (0.5, 4), (0.6, 4), (0.7, 3), (0.8, 4), (smallest, 2)]:
        expected = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(dense)
        assert len(np.unique(expected[expected >= 0])) > 1, eps  # a test of clusters, not errors
        labels = cluster_features(feats, eps, min_samples, k1=20, k2=6)
        np.testing.assert_array_equal(labels, expected, err_msg=f"eps={eps}")


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_faiss_search_gives_the_torch_matrix(metric):
    pytest.importorskip("faiss")
    feats = clustered()[8:]  # no exact duplicates: backends may order ties differently
    by_torch = jaccard_neighbours(feats, 20, 6, metric, "torch")
    by_faiss = jaccard_neighbours(feats, 20, 6, metric, "faiss")
    np.testing.assert_array_equal(by_faiss.indptr, by_torch.indptr)
    np.testing.assert_array_equal(by_faiss.indices, by_torch.indices)
    np.testing.assert_allclose(by_faiss.data, by_torch.data, atol=1e-5)
    labels = cluster_features(feats, 0.6, 4, 20, 6, knn_backend="faiss")
    np.testing.assert_array_equal(labels, cluster_features(feats, 0.6, 4, 20, 6))


def test_pairs_beyond_the_cutoff_cost_no_memory_at_scale():
    """20,000 items: the dense float32 matrix would take 1.6 GB. Random features are the hard
    case (hub items sit in many neighbourhoods: half of all pairs share one), so what bounds the
    memory is the cutoff, as DBSCAN's eps sets it."""
    n = 20_000
    feats = np.random.default_rng(0).standard_normal((n, 64), dtype=np.float32)
    jaccard_neighbours(feats[:200])  # compiled kernels loaded before measuring
    process = psutil.Process()
    baseline = peak = process.memory_info().rss
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.005):
            peak = max(peak, process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        sparse = jaccard_neighbours(feats, k1=20, k2=6, max_distance=0.9)
    finally:
        done.set()
        sampler.join()
    dense_bytes = n * n * 4
    held = sparse.data.nbytes + sparse.indices.nbytes + sparse.indptr.nbytes
    assert sparse.shape == (n, n) and sparse.nnz < 0.02 * n * n
    assert held < 0.02 * dense_bytes and peak - baseline < 0.25 * dense_bytes


def test_cutoffs_outside_the_jaccard_range_are_rejected():
    feats = clustered()
    for cutoff in (0.0, 1.5):
        with pytest.raises(ValueError, match="max_distance"):
            jaccard_neighbours(feats, max_distance=cutoff)
    with pytest.raises(ValueError, match="eps"):  # dense DBSCAN would link every pair
        cluster_features(feats, eps=1.0, min_samples=4)
