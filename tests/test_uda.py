import numpy as np
import pytest
import torch

from reid_core.config import AdaptConfig, ModelConfig, SolverConfig
from reid_core.data.splits import Split
from reid_core.evaluation.rerank import jaccard_distance
from reid_core.modeling import create_model
from reid_core.modeling.model import ReidOutput
from reid_core.uda.memory import ClusterMemoryLoss, cluster_centroids
from reid_core.uda.pseudo_labels import (
    PseudoLabelError,
    cluster_features,
    label_quality,
    outliers_as_singletons,
)
from reid_core.uda.rounds import adapt_round, training_set


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


# ---------------------------------------------------------------- cluster memory and rounds


def test_centroids_are_unit_means_of_unit_features():
    feats = np.array([[2.0, 0.0], [0.0, 5.0], [0.0, -1.0], [0.0, -3.0]])
    centroids = cluster_centroids(feats, np.array([0, 0, 1, 1]))
    half = 2**-0.5
    torch.testing.assert_close(centroids, torch.tensor([[half, half], [0.0, -1.0]]))


def _memory_output(embedding):
    return ReidOutput(features=embedding, neck=embedding, logits=None)


def test_memory_loss_is_cross_entropy_over_cosine_similarities_at_the_temperature():
    torch.manual_seed(0)
    memory = torch.nn.functional.normalize(torch.randn(5, 8), dim=1)
    x = torch.randn(4, 8)
    labels = torch.tensor([0, 3, 3, 1])
    loss = ClusterMemoryLoss(memory, temperature=0.05, momentum=0.2).eval()
    expected = torch.nn.functional.cross_entropy(
        torch.nn.functional.normalize(x, dim=1) @ memory.T / 0.05, labels
    )
    terms = loss(_memory_output(x), labels)
    assert terms["loss_memory"].item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(loss.memory, memory)  # eval mode leaves the memory alone


def test_memory_entries_move_towards_their_samples_one_by_one():
    memory = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = ClusterMemoryLoss(memory, temperature=0.1, momentum=0.5).train()
    x = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], requires_grad=True)
    loss(_memory_output(x), torch.tensor([0, 0]))["loss_memory"].backward()  # after the update
    assert x.grad is not None
    first = torch.tensor([0.5, 0.5]) / torch.tensor([0.5, 0.5]).norm()
    second = 0.5 * first + 0.5 * torch.tensor([-1.0, 0.0])
    torch.testing.assert_close(loss.memory[0], second / second.norm())
    torch.testing.assert_close(loss.memory[1], torch.tensor([0.0, 1.0]))
    assert "memory" in loss.state_dict(), "a resumed run continues with the memory"


def test_outlier_policy_drops_outliers_or_gives_each_its_own_id():
    target = Split(
        images=torch.zeros(5, 3, 8, 4, dtype=torch.uint8),
        pids=np.arange(5),
        camids=np.zeros(5, np.int64),
        paths=np.array(list("abcde")),
    )
    labels = np.array([3, -1, 3, 7, -1])
    dropped, rows = training_set(target, labels, "drop")
    assert rows.tolist() == [0, 2, 3] and dropped.labels.tolist() == [0, 0, 1]
    kept, rows = training_set(target, labels, "singletons")
    assert rows.tolist() == [0, 1, 2, 3, 4] and kept.labels.tolist() == [0, 2, 0, 1, 3]


def test_a_round_that_cannot_cluster_leaves_the_model_untouched():
    torch.manual_seed(0)
    model = create_model(ModelConfig(base_width=8), 4).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    target = Split(
        images=(torch.rand(12, 3, 32, 16) * 255).to(torch.uint8),
        pids=np.repeat(np.arange(3), 4),
        camids=np.zeros(12, np.int64),
        paths=np.array([str(i) for i in range(12)]),
    )
    config = AdaptConfig(eps=1e-6, min_samples=2, k1=3, k2=1)
    with pytest.raises(PseudoLabelError, match="outlier"):
        adapt_round(model, target, config, 0, batch_size=4)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key])


@pytest.mark.parametrize("objective", ["memory", "ce"])
def test_a_round_trains_on_the_pseudo_ids_with_either_objective(objective):
    torch.manual_seed(0)
    model = create_model(ModelConfig(base_width=8), 4).eval()
    colours = torch.tensor([[250, 10, 10], [10, 250, 10], [10, 10, 250]], dtype=torch.float)
    images = colours.repeat_interleave(6, 0)[:, :, None, None].expand(-1, -1, 32, 16)
    noise = torch.randint(0, 30, images.shape)
    target = Split(
        images=(images + noise).clamp(0, 255).to(torch.uint8),
        pids=np.repeat(np.arange(3), 6),
        camids=np.tile(np.arange(2), 9),
        paths=np.array([str(i) for i in range(18)]),
    )
    config = AdaptConfig(
        eps=0.6, min_samples=2, k1=5, k2=2, objective=objective,
        solver=SolverConfig(epochs=1, ids_per_batch=2, images_per_id=2, warmup_epochs=0),
    )  # fmt: skip
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    found = adapt_round(model, target, config, 0, batch_size=8)
    assert found["clusters"] == 3 and found["pseudo_ari"] == pytest.approx(1.0)
    assert model.num_classes == found["pseudo_ids_trained"] == 3
    changed = [not torch.equal(v, before[k]) for k, v in model.backbone.state_dict().items()]
    assert any(changed), "the backbone was trained"
