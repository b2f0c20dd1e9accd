"""Recipe presets: every file validates, builds its model, and says what the recipe says."""

from __future__ import annotations

from pathlib import Path

import pytest

from reid_core.config import ConfigError, ReidConfig, load_config
from reid_core.modeling import create_model

RECIPES = Path(__file__).resolve().parents[1] / "configs" / "recipes"
PRESETS = sorted(p for p in RECIPES.glob("*.yaml") if not p.name.startswith("Base-"))


def test_every_published_recipe_has_a_preset():
    names = {p.stem for p in PRESETS}
    for recipe in ("bagtricks", "agw", "sbs"):
        for backbone in ("R50", "R50-ibn", "R101-ibn", "S50"):
            assert f"{recipe}_{backbone}" in names
    vehicles = {"veri_sbs_R50-ibn", "veri_bagtricks_R50-ibn"}
    vehicles |= {"vehicleid_sbs_R50-ibn", "veriwild_sbs_R50-ibn"}
    assert vehicles <= names


@pytest.mark.parametrize(
    ("preset", "fmt", "test_set"),
    [("vehicleid_sbs_R50-ibn", "vehicleid", "800"), ("veriwild_sbs_R50-ibn", "veriwild", "small")],
)
def test_vehicle_presets_read_their_layout_at_256_square_with_sbs(preset, fmt, test_set):
    config = load_config([RECIPES / f"{preset}.yaml"])
    assert (config.data.format, config.data.test_set) == (fmt, test_set)
    assert (config.data.height, config.data.width) == (256, 256)
    assert config.train.model.classifier == "circle" and config.train.model.ibn == "a"


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_preset_validates_and_builds_its_model(preset):
    config = load_config([preset])
    model = create_model(config.train.model, num_classes=10)
    assert model.embedding_dim > 0


def test_sbs_preset_carries_the_sbs_tricks_over_the_bag_of_tricks():
    sbs = load_config([RECIPES / "sbs_R50-ibn.yaml"])
    m, loss, solver = sbs.train.model, sbs.train.loss, sbs.train.solver
    assert (m.backbone, m.ibn, m.non_local, m.pooling) == ("resnet50", "a", True, "gem_learnable")
    assert (m.neck_feat, m.metric_feat) == ("after", "after")
    assert (m.classifier, m.classifier_scale, m.classifier_margin) == ("circle", 64.0, 0.35)
    assert loss.triplet_margin == 0.0 and loss.label_smoothing == 0.1
    assert (solver.scheduler, solver.freeze_iters, solver.images_per_id) == ("cosine", 1000, 16)
    assert (sbs.data.height, sbs.data.width) == (384, 128)
    assert sbs.train.augment.autoaugment_p == 0.1 and sbs.train.augment.erasing_p == 0.5


def test_bag_of_tricks_preset_trains_as_fastreid_configures_it():
    """FastReID's Base-bagtricks: triplet on the pooled feature, embedding after the BNNeck,
    5e-4 decay on every parameter, epochs of len(train) // 64 iterations, LR stepped per
    epoch after warmup."""
    config = load_config([RECIPES / "bagtricks_R50.yaml"])
    m, s = config.train.model, config.train.solver
    assert (m.head, m.metric_feat, m.neck_feat, m.pooling) == ("bnneck", "before", "after", "avg")
    assert s.weight_decay == s.weight_decay_norm == 5e-4
    assert (m.stem_pool, config.train.loss.label_smoothing_over) == ("ceil", "others")
    assert m.zero_init_residual is False
    assert (s.sampler, config.train.augment.erasing_box) == ("chunked", "torchvision")
    assert (s.epoch_length, s.schedule_clock) == ("images", "epochs_after_warmup")
    assert (s.steps, s.gamma, s.warmup_factor, s.epochs) == ([40, 90], 0.1, 0.1, 120)
    parity = load_config([RECIPES / "parity_bagtricks_R18.yaml"])
    assert parity.train.model.backbone == "resnet18" and parity.train.model.pretrained == ""
    assert parity.train.model.metric_feat == "before" and parity.train.solver.steps == [20, 32]


def test_reidflow_parity_preset_differs_only_by_reidflows_own_choices():
    fastreid = load_config([RECIPES / "parity_bagtricks_R18.yaml"]).flat()
    ours = load_config([RECIPES / "parity_bagtricks_R18_reidflow.yaml"]).flat()
    defaults = ReidConfig().flat()
    differ = {k for k, v in ours.items() if fastreid[k] != v}
    assert differ == {
        "train.model.stem_pool",
        "train.loss.label_smoothing_over",
        "train.solver.sampler",
        "train.augment.erasing_box",
    }
    assert all(ours[k] == defaults[k] for k in differ)


def test_a_user_file_starts_from_a_preset_and_overrides_keys(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text(f"_base_: {RECIPES / 'bagtricks_R50.yaml'}\ntrain:\n  solver: {{lr: 0.01}}\n")
    config = load_config([mine], ["train.solver.epochs=3"])
    assert config.train.solver.lr == 0.01 and config.train.solver.epochs == 3
    assert config.train.loss.triplet_margin == 0.3  # from the preset


def test_preset_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        f"_base_: {RECIPES / 'sbs_R50.yaml'}\ntrain:\n  solver: {{warmup_mehtod: exp}}\n"
    )
    with pytest.raises(ConfigError, match=r"train\.solver\.warmup_mehtod: unknown key"):
        load_config([bad])
    bad.write_text(f"_base_: {RECIPES / 'sbs_R50.yaml'}\ntrain:\n  model: {{backbone: resnet7}}\n")
    with pytest.raises(ConfigError, match=r"train\.model\.backbone: .*unknown backbone 'resnet7'"):
        load_config([bad])
    bad.write_text("_base_: bad.yaml\n")
    with pytest.raises(ConfigError, match="includes itself"):
        load_config([bad])
    bad.write_text("_base_: missing.yaml\n")
    with pytest.raises(ConfigError, match="_base_ file not found"):
        load_config([bad])
