import numpy as np
import pytest
import torch

from reid_core.config import ModelConfig
from reid_core.evaluation import dsr
from reid_core.evaluation.distance import compute_distance
from reid_core.evaluation.dsr import (
    choose_fusion_weight,
    choose_rerank_weight,
    dsr_distance,
    dsr_rerank,
    dsr_top_k,
    fuse_distances,
)
from reid_core.evaluation.features import extract_features, extract_features_and_maps
from reid_core.evaluation.rank import evaluate_rank
from reid_core.modeling import create_model
from reid_core.modeling.backbones import BACKBONES


def reference_dsr(q_maps, g_maps, lam=1e-3):
    """DSR from its definition: per pair, per query position, an explicit ridge solve."""
    q = np.asarray(q_maps, np.float64).reshape(len(q_maps), q_maps.shape[1], -1)
    g = np.asarray(g_maps, np.float64).reshape(len(g_maps), g_maps.shape[1], -1)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)  # each position unit length over channels
    g = g / np.linalg.norm(g, axis=1, keepdims=True)
    out = np.zeros((len(q), len(g)))
    for i in range(len(q)):
        for j in range(len(g)):
            y = g[j]  # (C, N_g): the dictionary
            errors = []
            for n in range(q.shape[2]):
                x = q[i, :, n]
                w = np.linalg.solve(y.T @ y + lam * np.eye(y.shape[1]), y.T @ x)
                errors.append(np.linalg.norm(x - y @ w))
            out[i, j] = np.mean(errors)
    return out


@pytest.mark.parametrize(
    "q_shape, g_shape",
    [((3, 16, 2, 3), (5, 16, 3, 2)), ((4, 12, 5), (6, 12, 7))],
    ids=["NCHW", "NCN"],
)
def test_dsr_matches_the_per_pair_per_position_definition(q_shape, g_shape):
    rng = np.random.default_rng(0)
    q = rng.normal(size=q_shape).astype(np.float32)
    g = rng.normal(size=g_shape).astype(np.float32)
    got = dsr_distance(q, g, lam=0.05)
    assert got.dtype == np.float32 and got.shape == (q_shape[0], g_shape[0])
    np.testing.assert_allclose(got, reference_dsr(q, g, lam=0.05), atol=1e-4)
    np.testing.assert_allclose(dsr_distance(q, g), reference_dsr(q, g), atol=1e-4)


def test_float64_and_torch_inputs_are_accepted():
    rng = np.random.default_rng(1)
    q, g = rng.normal(size=(2, 8, 4)), rng.normal(size=(3, 8, 6))
    expected = reference_dsr(q, g)
    np.testing.assert_allclose(dsr_distance(torch.tensor(q), torch.tensor(g)), expected, atol=1e-6)
    got32 = dsr_distance(torch.tensor(q, dtype=torch.float32), g.astype(np.float32))
    np.testing.assert_allclose(got32, expected, atol=1e-4)


def test_a_crop_of_a_gallery_map_is_reconstructed_almost_exactly():
    rng = np.random.default_rng(2)
    gallery = rng.normal(size=(2, 32, 6, 3)).astype(np.float32)  # two identities, holistic
    crop = gallery[:1, :, 1:4, :]  # rows 1–3 of identity 0: a partial view, 9 of 18 positions
    d = dsr_distance(crop, gallery)
    assert d[0, 0] < 0.02
    assert d[0, 1] > 0.3
    assert d[0, 1] > 20 * d[0, 0]


def partial_split(rng, n_ids, first_pid, n_gal=2, channels=32, height=6, width=2, crop=3):
    """Holistic gallery maps and top/middle/bottom crops as queries, with spatial noise.

    The global feature is each map's mean over positions (global average pooling), so a
    partial query's global feature is pooled over only the part it shows.
    """
    base = rng.normal(size=(n_ids, channels, height, width))
    g_maps = base.repeat(n_gal, axis=0) + 1.4 * rng.normal(size=(n_ids * n_gal, *base.shape[1:]))
    tops = rng.integers(0, height - crop + 1, size=n_ids)
    q_maps = np.stack([base[p][:, t : t + crop] for p, t in enumerate(tops)])
    q_maps = q_maps + 1.4 * rng.normal(size=q_maps.shape)
    q_maps, g_maps = q_maps.astype(np.float32), g_maps.astype(np.float32)
    q_pids = first_pid + np.arange(n_ids)
    g_pids = first_pid + np.arange(n_ids).repeat(n_gal)
    glob = compute_distance(q_maps.mean((2, 3)), g_maps.mean((2, 3)))
    labels = (q_pids, g_pids, np.zeros(n_ids, int), np.ones(len(g_pids), int))
    return glob, dsr_distance(q_maps, g_maps), labels


def test_fusion_weight_chosen_on_validation_improves_partial_reid_on_test():
    rng = np.random.default_rng(3)
    val_global, val_dsr, val_labels = partial_split(rng, 30, first_pid=1)
    test_global, test_dsr, test_labels = partial_split(rng, 30, first_pid=100)  # other people

    weight = choose_fusion_weight(val_global, val_dsr, *val_labels)
    assert 0.0 < weight < 1.0

    def m_ap(dist):
        return evaluate_rank(dist, *test_labels).mAP

    fused = m_ap(fuse_distances(test_global, test_dsr, weight))
    assert fused > m_ap(test_global) + 0.05
    assert fused > m_ap(test_dsr) + 0.02


def test_fuse_distances_convention():
    g, d = np.array([[0.2, 1.0]]), np.array([[0.6, 0.0]])
    np.testing.assert_allclose(fuse_distances(g, d, 0.25), [[0.3, 0.75]], atol=1e-7)
    np.testing.assert_array_equal(fuse_distances(g, d, 0.0), g.astype(np.float32))
    assert fuse_distances(g, d, 1.0).dtype == np.float32


def test_choose_fusion_weight_prefers_the_smallest_of_tied_weights():
    glob = np.array([[0.1, 0.9], [0.9, 0.1]])  # perfect; DSR reversed: weights < 0.5 tie
    pids, camids = np.array([1, 2]), np.array([0, 0])
    weight = choose_fusion_weight(glob, glob[::-1], pids, pids, camids, camids + 1)
    assert weight == 0.0


def test_rerank_rescores_only_the_global_top_k():
    rng = np.random.default_rng(4)
    q = rng.normal(size=(4, 16, 3)).astype(np.float32)
    g = rng.normal(size=(9, 16, 5)).astype(np.float32)
    glob = compute_distance(q.mean(2), g.mean(2))
    full = fuse_distances(glob, dsr_distance(q, g), 0.7)
    out = dsr_rerank(glob, q, g, top_k=3, weight=0.7)
    for i in range(len(q)):
        top = np.argsort(glob[i], kind="stable")[:3]
        rest = np.setdiff1d(np.arange(len(g)), top)
        np.testing.assert_allclose(out[i, top], full[i, top], atol=1e-5)
        assert out[i, rest].min() > out[i, top].max()  # the rest ranks after the re-scored
        np.testing.assert_array_equal(np.argsort(out[i, rest]), np.argsort(glob[i, rest]))
    np.testing.assert_allclose(dsr_rerank(glob, q, g, top_k=50, weight=0.7), full, atol=1e-5)


def test_the_top_k_is_computed_once_and_fused_at_any_weight_as_rerank_does():
    rng = np.random.default_rng(5)
    q = rng.normal(size=(5, 8, 3)).astype(np.float32)
    g = rng.normal(size=(11, 8, 4)).astype(np.float32)
    glob = compute_distance(q.mean(2), g.mean(2))
    top = dsr_top_k(glob, q, g, top_k=4)
    for weight in (0.0, 0.3, 1.0):
        np.testing.assert_array_equal(top.fused(weight), dsr_rerank(glob, q, g, 4, weight))


def test_the_rerank_weight_is_the_best_on_validation_and_every_weight_is_scored():
    rng = np.random.default_rng(3)
    pids = np.arange(1, 21)
    body = rng.normal(size=(20, 16, 8)).astype(np.float32)  # a whole body: 8 positions
    partial = body[:, :, :3] + 0.05 * rng.normal(size=(20, 16, 3)).astype(np.float32)
    glob = compute_distance(partial.mean(2), body.mean(2))  # the pooled crop matches badly
    top = dsr_top_k(glob, partial, body, top_k=10)
    cams_q, cams_g = np.zeros(20), np.ones(20)
    weight, scores = choose_rerank_weight(top, pids, pids, cams_q, cams_g, [0.0, 0.5, 1.0])
    assert list(scores) == [0.0, 0.5, 1.0]
    assert scores[weight] == max(scores.values()) and scores[weight] > scores[0.0]
    expected = evaluate_rank(top.fused(weight), pids, pids, cams_q, cams_g).mAP
    assert scores[weight] == expected


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_every_backbone_gives_the_maps_its_embedding_is_pooled_from_in_one_pass(backbone):
    narrow = {"base_width": 16} if backbone.startswith("res") else {}  # ResNet family: faster
    model = create_model(ModelConfig(backbone=backbone, **narrow), 3, pretrained=False)
    images = (torch.rand(3, 3, 64, 32) * 255).to(torch.uint8)
    feats, maps = extract_features_and_maps(model, images, batch_size=2)
    np.testing.assert_allclose(feats, extract_features(model, images, 2), rtol=1e-4, atol=1e-5)
    assert maps.ndim == 4 and len(maps) == 3 and maps.shape[1] > 1 and maps.shape[2] > 1
    # the embedding is the pooled maps through the head: no second forward pass differs
    model.eval()
    with torch.no_grad():
        pooled = model._embed(model.pool(torch.as_tensor(maps)))
    np.testing.assert_allclose(pooled.numpy(), feats, rtol=1e-4, atol=1e-5)


def test_blocking_gives_the_same_distances(monkeypatch):
    rng = np.random.default_rng(5)
    q = rng.normal(size=(7, 8, 2, 2)).astype(np.float32)
    g = rng.normal(size=(11, 8, 5)).astype(np.float32)
    glob = rng.random((7, 11)).astype(np.float32)
    one_block = dsr_distance(q, g)
    reranked = dsr_rerank(glob, q, g, top_k=4, weight=0.5)
    assert dsr._block_sizes(7, 11, 4, 5) == (11, 7)  # the default is one block here
    for elements in (1, 45, 150):
        monkeypatch.setattr(dsr, "BLOCK_ELEMENTS", elements)
        np.testing.assert_allclose(dsr_distance(q, g), one_block, atol=1e-6)
        np.testing.assert_allclose(dsr_rerank(glob, q, g, top_k=4, weight=0.5), reranked, atol=1e-6)


def test_bad_inputs_are_named():
    q, g = np.ones((2, 8, 3), np.float32), np.ones((3, 8, 4), np.float32)
    with pytest.raises(ValueError, match="different channel counts: 8 vs 6"):
        dsr_distance(q, np.ones((3, 6, 4)))
    nan = g.copy()
    nan[1, 2, 0] = np.nan
    with pytest.raises(ValueError, match=r"gallery maps .* NaN or inf in 1 items \(first: \[1\]"):
        dsr_distance(q, nan)
    with pytest.raises(ValueError, match="query maps contain NaN or inf"):
        dsr_distance(np.full((1, 8, 3), np.inf), g)
    with pytest.raises(ValueError, match="gallery is empty"):
        dsr_distance(q, np.ones((0, 8, 4)))
    for lam in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="regularisation lam must be a positive"):
            dsr_distance(q, g, lam=lam)
    with pytest.raises(ValueError, match=r"must be \(n, C, H, W\) or \(n, C, N\)"):
        dsr_distance(np.ones((2, 8)), g)
    with pytest.raises(ValueError, match="fusion weight must be in"):
        fuse_distances(np.ones((2, 3)), np.ones((2, 3)), 1.5)
    with pytest.raises(ValueError, match="distance shapes do not match"):
        fuse_distances(np.ones((2, 3)), np.ones((3, 2)), 0.5)
    with pytest.raises(ValueError, match="global_dist has shape"):
        dsr_rerank(np.ones((2, 4)), q, g, top_k=2, weight=0.5)
    with pytest.raises(ValueError, match="top_k must be"):
        dsr_rerank(np.ones((2, 3)), q, g, top_k=0, weight=0.5)
