import numpy as np
import pytest
import torch

from reid_core.config import EvaluateConfig, ModelConfig
from reid_core.evaluation import (
    alpha_query_expansion,
    average_query_expansion,
    compute_distance,
    extract_features,
    re_rank,
)
from reid_core.evaluation.protocol import evaluation_distances
from reid_core.modeling import create_model


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_average_qe_is_the_mean_of_the_query_and_its_top_m_gallery_features():
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(4, 8)), rng.normal(size=(30, 8))
    out = average_query_expansion(q, g, m=3)
    qn, gn = unit(q), unit(g)
    top = np.argsort(-qn @ gn.T, axis=1)[:, :3]
    expected = unit((qn + gn[top].sum(1)) / 4)
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_alpha_qe_weights_neighbours_by_similarity_to_the_power_alpha():
    rng = np.random.default_rng(1)
    q, g = rng.normal(size=(3, 6)), rng.normal(size=(20, 6))
    out = alpha_query_expansion(q, g, k=5, alpha=3.0)
    qn, gn = unit(q), unit(g)
    sims = qn @ gn.T
    top = np.argsort(-sims, axis=1)[:, :5]
    w = np.clip(np.take_along_axis(sims, top, 1), 0, None) ** 3
    expected = unit((qn + (w[:, :, None] * gn[top]).sum(1)) / (1 + w.sum(1, keepdims=True)))
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_qe_bad_arguments_are_named():
    with pytest.raises(ValueError, match="k ≤ gallery size"):
        alpha_query_expansion(np.ones((1, 2)), np.ones((3, 2)), k=4)
    with pytest.raises(ValueError, match="shapes"):
        alpha_query_expansion(np.ones((1, 2)), np.ones((3, 5)))


def test_flip_test_averages_an_image_and_its_mirror():
    torch.manual_seed(0)
    model = create_model(ModelConfig(base_width=8), 0).eval()
    images = (torch.rand(5, 3, 64, 32) * 255).to(torch.uint8)
    with torch.no_grad():
        plain = model(images.float())
        mirrored = model(images.flip(-1).float())
    got = extract_features(model, images, batch_size=2, flip=True)
    np.testing.assert_allclose(got, ((plain + mirrored) / 2).numpy(), atol=1e-5)


def test_evaluation_distances_follow_the_configuration():
    rng = np.random.default_rng(2)
    q, g = rng.normal(size=(6, 8)).astype(np.float32), rng.normal(size=(25, 8)).astype(np.float32)
    plain = evaluation_distances(q, g, EvaluateConfig())
    np.testing.assert_allclose(plain, compute_distance(q, g, "cosine"))
    expanded = evaluation_distances(q, g, EvaluateConfig(query_expansion="average", qe_k=2))
    np.testing.assert_allclose(
        expanded, compute_distance(average_query_expansion(q, g, 2), g, "cosine"), atol=1e-6
    )
    reranked = evaluation_distances(q, g, EvaluateConfig(rerank=True, rerank_k1=5, rerank_k2=2))
    np.testing.assert_allclose(reranked, re_rank(q, g, 5, 2, 0.3, "cosine"))
