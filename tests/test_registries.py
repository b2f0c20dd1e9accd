"""The registries of pluggable parts: what registering means, and every registered part of the
kinds no other test walks (augmentations, losses, samplers), driven by the registries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reid_core.config import ConfigError, config_from_dict
from reid_core.data.samplers import SAMPLERS, create_sampler
from reid_core.engine.augment import AUGMENTATIONS, BatchAugment
from reid_core.modeling import create_model
from reid_core.modeling.losses import LOSSES, ReidLoss
from reid_core.options import AugmentConfig, LossConfig, ModelConfig, SolverConfig
from reid_core.registry import Registry


def test_a_name_registered_twice_is_refused():
    parts: Registry[int] = Registry("widget")
    parts.register("a")(1)
    with pytest.raises(ValueError, match="widget 'a' is registered twice"):
        parts.add("a", 2)
    assert dict(parts) == {"a": 1}


def test_an_unknown_name_lists_the_known_ones_in_registration_order():
    parts: Registry[int] = Registry("widget")
    parts.add("b", 1)
    parts.add("a", 2)
    with pytest.raises(ValueError, match="unknown widget 'c'; known: b, a"):
        parts.lookup("c")


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        ("train.model.backbone", "backbone"),
        ("train.model.pooling", "pooling"),
        ("train.model.head", "head"),
        ("distill.model.classifier", "classifier"),
        ("adapt.solver.sampler", "sampler"),
        ("data.format", "dataset format"),
    ],
)
def test_the_config_takes_only_registered_names_and_names_the_key(key, kind):
    tree: dict = {}
    *parents, leaf = key.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = "no-such-part"
    with pytest.raises(ConfigError, match=f"{key}: .*unknown {kind} 'no-such-part'"):
        config_from_dict(tree)


def test_every_augmentation_is_built_when_its_options_turn_it_on():
    on = AugmentConfig(flip_p=1, pad=4, erasing_p=1, patch_p=1, cutout_p=1, color_jitter_p=1,
                       autoaugment_p=1, augmix_p=1)  # fmt: skip
    augment = BatchAugment(on, 32, 16).train()
    assert len(augment.ops) == len(AUGMENTATIONS), "an op's options are not all turned on here"
    torch.manual_seed(0)
    out = augment(torch.randint(0, 256, (4, 3, 32, 16), dtype=torch.uint8))
    assert out.shape == (4, 3, 32, 16) and torch.isfinite(out).all()
    assert len(BatchAugment(AugmentConfig(flip_p=0, pad=0, erasing_p=0), 32, 16).ops) == 0


@pytest.mark.parametrize("name", list(LOSSES))
def test_every_loss_has_a_weight_option_and_gives_a_finite_term(name):
    weights = {f"{other}_weight": 0.0 for other in LOSSES}
    assert f"{name}_weight" in LossConfig.model_fields, f"LossConfig lacks {name}_weight"
    torch.manual_seed(0)
    model = create_model(ModelConfig(base_width=8), num_classes=3).train()
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    out = model(torch.rand(6, 3, 64, 32) * 255, labels)
    terms = ReidLoss(LossConfig(**{**weights, f"{name}_weight": 0.5}))(out, labels)
    assert list(terms) == [f"loss_{name}"]
    assert terms[f"loss_{name}"].ndim == 0 and torch.isfinite(terms[f"loss_{name}"])


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_deals_batches_of_p_identities_times_k_images(name):
    labels = np.repeat(np.arange(6), 5)
    camids = np.tile(np.arange(5), 6)
    config = SolverConfig(sampler=name, ids_per_batch=3, images_per_id=2)
    sampler = create_sampler(config, labels, camids)
    batch = next(iter(sampler.batches()))
    assert len(batch) == 6
    assert sorted(np.unique(labels[batch], return_counts=True)[1]) == [2, 2, 2]
