import numpy as np
import pytest
import torch

from reid_core.config import ModelConfig
from reid_core.data.samplers import PKSampler
from reid_core.engine.checkpoint import load_checkpoint, save_checkpoint
from reid_core.modeling import create_model
from reid_core.modeling.backbones import create_backbone
from reid_core.modeling.losses import batch_hard_triplet
from reid_core.modeling.pooling import POOLINGS, GeneralizedMeanPooling, create_pooling


@pytest.mark.parametrize(
    ("backbone", "ibn", "last_stride", "pooling"),
    [
        ("resnet18", False, 1, "gem"),
        ("resnet50", True, 2, "avg"),
        ("resnet18", False, 2, "attention"),
        ("resnet18", True, 1, "gem_learnable"),
    ],
)
def test_model_gives_training_outputs_and_eval_embeddings(backbone, ibn, last_stride, pooling):
    config = ModelConfig(
        backbone=backbone, base_width=8, ibn=ibn, last_stride=last_stride, pooling=pooling
    )
    model = create_model(config, num_classes=5)
    images = torch.rand(4, 3, 64, 32) * 255
    out = model.train()(images)
    dim = model.embedding_dim
    assert out.features.shape == (4, dim) and out.neck.shape == (4, dim)
    assert out.logits.shape == (4, 5)
    assert model.eval()(images).shape == (4, dim)


def test_last_stride_one_keeps_twice_the_resolution():
    x = torch.rand(1, 3, 64, 32)
    s1 = create_backbone("resnet18", last_stride=1, base_width=8)(x)
    s2 = create_backbone("resnet18", last_stride=2, base_width=8)(x)
    assert s1.shape[-2:] == (4, 2) and s2.shape[-2:] == (2, 1)


def test_unknown_backbone_names_the_known_ones():
    with pytest.raises(ValueError, match="resnet50"):
        create_backbone("resnet7")


def test_gem_between_average_and_max():
    x = torch.rand(2, 3, 4, 4) + 0.1
    gem = GeneralizedMeanPooling(p=3.0)(x)
    assert torch.all(gem >= x.mean((2, 3)) - 1e-6) and torch.all(gem <= x.amax((2, 3)) + 1e-6)
    torch.testing.assert_close(GeneralizedMeanPooling(p=1.0)(x), x.mean((2, 3)))


def test_checkpoint_round_trip_is_exact(tmp_path):
    model = create_model(ModelConfig(base_width=8, ibn=True), 3).eval()
    save_checkpoint(tmp_path / "ckpt", model, {"height": 64, "width": 32, "stage": "train"})
    loaded, meta = load_checkpoint(tmp_path / "ckpt")
    x = torch.rand(2, 3, 64, 32) * 255
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert meta["embedding_dim"] == model.embedding_dim and meta["stage"] == "train"


def test_loading_a_folder_that_is_not_a_checkpoint_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_checkpoint(tmp_path)


def test_batch_hard_triplet_uses_hardest_pairs():
    feats = torch.tensor([[0.0], [1.0], [1.5], [4.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # anchor 0: hardest pos 1.0, hardest neg 1.5 → relu(1.0-1.5+1)=0.5
    # anchor 1: pos 1.0, neg 0.5 → 1.5; anchor 2: pos 2.5, neg 0.5 → 3.0
    # anchor 3: pos 2.5, neg 3.0 → 0.5
    loss = batch_hard_triplet(feats, labels, margin=1.0)
    assert loss.item() == pytest.approx((0.5 + 1.5 + 3.0 + 0.5) / 4, abs=1e-4)


def test_pk_sampler_gives_p_identities_with_k_images_each():
    labels = np.repeat(np.arange(10), [5, 5, 5, 5, 5, 2, 5, 5, 5, 5])
    sampler = PKSampler(labels, ids_per_batch=4, images_per_id=3, seed=1)
    batches = list(sampler.epoch(0))
    assert len(batches) == len(sampler) == 2
    for batch in batches:
        ids, counts = np.unique(labels[batch], return_counts=True)
        assert len(ids) == 4 and set(counts) == {3}
    assert [b.tolist() for b in sampler.epoch(0)] == [b.tolist() for b in batches]


def test_device_auto_falls_back_to_cpu_and_cuda_without_gpu_is_an_error():
    from reid_core.engine.device import resolve_device

    if torch.cuda.is_available():
        assert resolve_device("auto").type == "cuda"
    else:
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(RuntimeError, match="no CUDA device"):
            resolve_device("cuda")


@pytest.mark.parametrize("name", sorted(POOLINGS))
def test_every_pooling_gives_one_vector_per_image_and_trains(name):
    pool = create_pooling(name, channels=6, p=3.0)
    x = (torch.rand(2, 6, 4, 3) + 0.05).requires_grad_()
    out = pool(x)
    assert out.shape == (2, 6) and torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_poolings_compute_what_their_names_say():
    x = torch.rand(2, 3, 4, 4) * 3
    mean, peak = x.mean((2, 3)), x.amax((2, 3))
    torch.testing.assert_close(create_pooling("avg", 3)(x), mean)
    torch.testing.assert_close(create_pooling("max", 3)(x), peak)
    torch.testing.assert_close(create_pooling("avg_max", 3)(x), mean + peak)
    torch.testing.assert_close(create_pooling("clipped_avg", 3)(x), mean.clamp(0, 1))
    torch.testing.assert_close(create_pooling("attention", 3)(x), mean)  # uniform at init


def test_learnable_gem_learns_p_and_fixed_gem_keeps_no_state():
    learnable = create_pooling("gem_learnable", 3, p=3.0)
    assert [name for name, _ in learnable.named_parameters()] == ["p"]
    learnable(torch.rand(2, 3, 4, 4) + 0.1).sum().backward()
    assert learnable.p.grad is not None and learnable.p.grad != 0
    assert create_pooling("gem", 3).state_dict() == {}


def test_unknown_pooling_names_the_known_ones():
    with pytest.raises(ValueError, match="avg_max"):
        create_pooling("median", 3)
