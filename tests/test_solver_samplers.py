import io

import numpy as np
import pytest
import torch
from torch import nn

from reid_core.config import ModelConfig, SolverConfig
from reid_core.data.samplers import (
    CameraBalancedSampler,
    ChunkedIdentitySampler,
    PKSampler,
    create_sampler,
)
from reid_core.engine.solver import (
    build_optimizer,
    build_scheduler,
    clip_gradients,
    lr_factor,
    param_groups,
)
from reid_core.modeling import create_model


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.GroupNorm(2, 4))
        self.head = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.scale = nn.Parameter(torch.ones(4))  # 1-d but not a norm nor a bias: decayed


GROUPS_CONFIG = SolverConfig(
    lr=0.1, weight_decay=1e-3, weight_decay_norm=1e-5, bias_lr_factor=2.0, heads_lr_factor=10.0
)


def group_of(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> dict:
    (group,) = [g for g in optimizer.param_groups if any(p is param for p in g["params"])]
    return group


@pytest.mark.parametrize(
    ("path", "factor", "decay"),
    [
        ("backbone.0.weight", 1.0, 1e-3),
        ("backbone.0.bias", 2.0, 1e-5),
        ("backbone.1.weight", 1.0, 1e-5),
        ("backbone.1.bias", 2.0, 1e-5),
        ("backbone.2.weight", 1.0, 1e-5),
        ("head.0.weight", 10.0, 1e-3),
        ("head.0.bias", 20.0, 1e-5),
        ("head.1.weight", 10.0, 1e-5),
        ("scale", 10.0, 1e-3),
    ],
)
def test_each_parameter_gets_its_lr_factor_and_weight_decay(path, factor, decay):
    model = TinyNet()
    optimizer = build_optimizer(model, GROUPS_CONFIG)
    group = group_of(optimizer, model.get_parameter(path))
    assert group["lr_factor"] == pytest.approx(factor)
    assert group["lr"] == pytest.approx(0.1 * factor)
    assert group["weight_decay"] == pytest.approx(decay)


def test_reid_model_parameters_each_land_in_exactly_one_merged_group():
    model = create_model(ModelConfig(base_width=8), 4)
    groups = param_groups(model, GROUPS_CONFIG)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())  # frozen ones included
    keys = [(g["lr_factor"], g["weight_decay"]) for g in groups]
    assert len(keys) == len(set(keys))
    optimizer = build_optimizer(model, GROUPS_CONFIG)
    assert group_of(optimizer, model.backbone.bn1.weight)["weight_decay"] == 1e-5
    assert group_of(optimizer, model.backbone.conv1.weight)["lr_factor"] == 1.0
    head_weight = group_of(optimizer, model.head.classifier.weight)
    assert (head_weight["lr_factor"], head_weight["weight_decay"]) == (10.0, 1e-3)
    assert group_of(optimizer, model.head.bottleneck.bias)["lr_factor"] == 20.0


def test_model_without_backbone_gets_no_heads_factor():
    model = nn.Sequential(nn.Linear(3, 3))
    factors = {g["lr_factor"] for g in param_groups(model, GROUPS_CONFIG)}
    assert factors == {1.0, 2.0}


@pytest.mark.parametrize(
    ("name", "cls"),
    [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)],
)
def test_optimizer_kind_and_sgd_momentum(name, cls):
    config = SolverConfig(optimizer=name, momentum=0.8, nesterov=True)
    optimizer = build_optimizer(TinyNet(), config)
    assert type(optimizer) is cls
    if name == "sgd":
        assert optimizer.defaults["momentum"] == 0.8 and optimizer.defaults["nesterov"]


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_parameters_frozen_at_build_time_train_once_unfrozen(name):
    model = TinyNet()
    optimizer = build_optimizer(model, SolverConfig(optimizer=name, lr=0.1))
    model.backbone.requires_grad_(False)
    before = model.backbone[0].weight.detach().clone()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        out = model.head(model.backbone(torch.rand(2, 3, 5, 5)).mean((2, 3)))
        (out * model.scale).square().sum().backward()
        optimizer.step()

    step()
    torch.testing.assert_close(model.backbone[0].weight, before)
    model.backbone.requires_grad_(True)
    step()
    assert not torch.equal(model.backbone[0].weight, before)


def warmup_config(method: str) -> SolverConfig:
    return SolverConfig(
        scheduler="multistep",
        steps=[],
        epochs=3,
        warmup_method=method,
        warmup_epochs=1.0,
        warmup_factor=0.1,
    )


@pytest.mark.parametrize(
    ("method", "formula"),
    [
        ("linear", lambda t: 0.1 + 0.9 * t / 10),
        ("constant", lambda t: 0.1),
        ("exp", lambda t: 0.1 ** (1 - t / 10)),
    ],
)
def test_warmup_follows_its_formula_then_reaches_one(method, formula):
    config = warmup_config(method)
    for t in (0, 5, 9):
        assert lr_factor(t, config, iters_per_epoch=10) == pytest.approx(formula(t))
    assert lr_factor(0, config, 10) == pytest.approx(0.1)
    assert lr_factor(10, config, 10) == pytest.approx(1.0)


def test_warmup_length_rounds_fractional_epochs():
    config = warmup_config("linear").model_copy(update={"warmup_epochs": 0.3})
    assert lr_factor(2, config, iters_per_epoch=10) == pytest.approx(0.1 + 0.9 * 2 / 3)
    assert lr_factor(3, config, iters_per_epoch=10) == 1.0


def test_multistep_drops_by_gamma_at_each_step_epoch():
    config = SolverConfig(
        scheduler="multistep", steps=[2, 4], gamma=0.1, epochs=6, warmup_epochs=0.0
    )
    factors = [lr_factor(t, config, iters_per_epoch=10) for t in (0, 19, 20, 39, 40, 59)]
    assert factors == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01, 0.01])


def test_cosine_is_flat_during_delay_and_hits_the_floor_at_the_last_iteration():
    config = SolverConfig(
        scheduler="cosine", epochs=6, warmup_epochs=1.0, delay_epochs=2, min_lr_factor=0.05
    )
    factors = np.array([lr_factor(t, config, iters_per_epoch=10) for t in range(60)])
    assert np.all(factors[10:31] == 1.0)
    assert np.all(np.diff(factors[30:]) < 0)
    assert factors[59] == 0.05
    assert factors[44] == pytest.approx(0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * 14 / 29)))


def fastreid_clock_lrs(config: SolverConfig, iters_per_epoch: int) -> list[float]:
    """LR of every iteration as FastReID 1.4 drives it, written from its definition: an
    epoch scheduler (torch's MultiStepLR / CosineAnnealingLR, eta_min = lr × min_lr_factor)
    that its LRScheduler hook steps after an epoch only when the next iteration is past warmup
    and the next epoch past DELAY_EPOCHS, and a warmup that sets lr = base × factor(iter)
    after each step while the next iteration is still within warmup."""
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=config.lr)
    warmup = round(config.warmup_epochs * iters_per_epoch)
    if config.scheduler == "multistep":
        main = torch.optim.lr_scheduler.MultiStepLR(optimizer, config.steps, config.gamma)
    else:
        span = config.epochs - max(-(-warmup // iters_per_epoch), config.delay_epochs)
        main = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, span, eta_min=config.lr * config.min_lr_factor
        )

    def warmup_factor(i: int) -> float:
        w = config.warmup_factor
        return 1.0 if i >= warmup else w + (1 - w) * i / warmup

    for group in optimizer.param_groups:
        group["lr"] = config.lr * warmup_factor(0)
    lrs, iteration = [], 0
    for epoch in range(config.epochs):
        for _ in range(iters_per_epoch):
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()  # no gradient: only keeps torch's step-order check quiet
            if iteration + 1 <= warmup:
                for group in optimizer.param_groups:
                    group["lr"] = config.lr * warmup_factor(iteration + 1)
            iteration += 1
        if iteration + 1 > warmup and epoch + 1 > config.delay_epochs:
            main.step()
    return lrs


@pytest.mark.parametrize(
    "settings",
    [
        {"scheduler": "multistep", "steps": [20, 32], "warmup_epochs": 5.0, "epochs": 40},
        {"scheduler": "multistep", "steps": [4, 9], "warmup_epochs": 2.5, "epochs": 12},
        {"scheduler": "multistep", "steps": [3], "warmup_epochs": 0.0, "epochs": 6},
        {
            "scheduler": "cosine",
            "delay_epochs": 6,
            "warmup_epochs": 2.0,
            "epochs": 12,
            "min_lr_factor": 0.002,
        },  # fmt: skip
        {
            "scheduler": "cosine",
            "delay_epochs": 1,
            "warmup_epochs": 3.4,
            "epochs": 10,
            "min_lr_factor": 0.01,
        },  # fmt: skip
    ],
)
def test_fastreid_epoch_clock_gives_fastreids_lr_at_every_iteration(settings):
    config = SolverConfig(lr=3.5e-4, schedule_clock="epochs_after_warmup", **settings)
    ipe = 9
    ours = [config.lr * lr_factor(t, config, ipe) for t in range(config.epochs * ipe)]
    np.testing.assert_allclose(ours, fastreid_clock_lrs(config, ipe), rtol=1e-9, atol=1e-15)


def test_fastreid_clock_drops_the_lr_later_than_the_milestones_say():
    """5 warmup epochs, steps at 20 and 32: FastReID drops at epochs 24 and 36."""
    config = SolverConfig(
        scheduler="multistep", steps=[20, 32], epochs=40, warmup_epochs=5.0,
        schedule_clock="epochs_after_warmup",
    )  # fmt: skip
    per_epoch = [lr_factor(e * 10, config, 10) for e in range(40)]
    assert per_epoch[23] == 1.0 and per_epoch[24] == pytest.approx(0.1)
    assert per_epoch[35] == pytest.approx(0.1) and per_epoch[36] == pytest.approx(0.01)


def test_scheduler_scales_each_groups_base_lr():
    model = TinyNet()
    optimizer = build_optimizer(model, GROUPS_CONFIG)
    scheduler = build_scheduler(optimizer, GROUPS_CONFIG, iters_per_epoch=5)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    expected = lr_factor(3, GROUPS_CONFIG, 5)
    for group in optimizer.param_groups:
        assert group["lr"] == pytest.approx(0.1 * group["lr_factor"] * expected)


def test_resumed_scheduler_continues_with_identical_lrs():
    config = SolverConfig(epochs=3, warmup_epochs=1.0, heads_lr_factor=10.0, optimizer="sgd")

    def fresh() -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        torch.manual_seed(0)
        optimizer = build_optimizer(TinyNet(), config)
        return optimizer, build_scheduler(optimizer, config, iters_per_epoch=5)

    def run(optimizer, scheduler, steps: int) -> list[list[float]]:
        lrs = []
        for _ in range(steps):
            lrs.append([g["lr"] for g in optimizer.param_groups])
            optimizer.step()
            scheduler.step()
        return lrs

    uninterrupted = run(*fresh(), 15)
    optimizer, scheduler = fresh()
    first = run(optimizer, scheduler, 7)
    buffer = io.BytesIO()
    torch.save({"opt": optimizer.state_dict(), "sched": scheduler.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    optimizer, scheduler = fresh()
    optimizer.load_state_dict(state["opt"])
    scheduler.load_state_dict(state["sched"])
    assert first + run(optimizer, scheduler, 8) == uninterrupted


def params_with_grads(*grads: list[float]) -> list[nn.Parameter]:
    params = [nn.Parameter(torch.zeros(len(g))) for g in grads]
    for param, grad in zip(params, grads, strict=True):
        param.grad = torch.tensor(grad)
    return params + [nn.Parameter(torch.zeros(2))]  # no grad: skipped


def test_clipping_by_norm_returns_the_pre_clip_norm_and_scales_to_the_limit():
    params = params_with_grads([3.0, 0.0], [4.0, 12.0])
    norm = clip_gradients(params, SolverConfig(clip_grad=2.0, clip_type="norm"))
    assert norm == pytest.approx(13.0)
    total = torch.cat([p.grad for p in params if p.grad is not None]).norm()
    assert float(total) == pytest.approx(2.0, rel=1e-5)
    assert params[-1].grad is None


def test_clipping_by_value_bounds_every_element():
    params = params_with_grads([3.0, -0.5], [-4.0, 12.0])
    clip_gradients(params, SolverConfig(clip_grad=1.0, clip_type="value"))
    assert params[0].grad.tolist() == [1.0, -0.5]
    assert params[1].grad.tolist() == [-1.0, 1.0]


def test_clipping_off_leaves_gradients_alone():
    params = params_with_grads([30.0])
    assert clip_gradients(params, SolverConfig(clip_grad=0.0)) is None
    assert params[0].grad.tolist() == [30.0]


def dataset(num_ids: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Identities with 1–9 images over 1–4 cameras (labels not contiguous)."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 10, num_ids)
    labels = np.repeat(np.arange(num_ids) * 3 + 7, counts)
    camids = rng.integers(0, 4, len(labels))
    return labels, camids


def make(kind: str, labels, camids, p: int, k: int, **kwargs):
    if kind == "pk":
        return PKSampler(labels, p, k, **kwargs)
    if kind == "chunked":
        return ChunkedIdentitySampler(labels, p, k, **kwargs)
    return CameraBalancedSampler(labels, camids, p, k, **kwargs)


@pytest.mark.parametrize("kind", ["pk", "camera"])
def test_every_identity_once_per_epoch_in_p_by_k_batches(kind):
    labels, camids = dataset()
    sampler = make(kind, labels, camids, 8, 4, seed=3)
    batches = list(sampler.epoch(0))
    assert len(batches) == len(sampler) == 5
    seen = []
    for batch in batches:
        assert batch.shape == (32,) and batch.dtype == np.int64
        ids, counts = np.unique(labels[batch], return_counts=True)
        assert len(ids) == 8 and set(counts) == {4}
        seen.extend(ids)
    assert sorted(seen) == sorted(np.unique(labels))


@pytest.mark.parametrize("kind", ["pk", "camera", "chunked"])
def test_epochs_are_deterministic_per_seed_and_differ_across_epochs(kind):
    labels, camids = dataset()
    a = make(kind, labels, camids, 8, 4, seed=3)
    b = make(kind, labels, camids, 8, 4, seed=3)
    c = make(kind, labels, camids, 8, 4, seed=4)

    def flat(sampler, epoch):
        return np.concatenate(list(sampler.epoch(epoch)))

    np.testing.assert_array_equal(flat(a, 1), flat(b, 1))
    assert not np.array_equal(flat(a, 0), flat(a, 1))
    assert not np.array_equal(flat(a, 0), flat(c, 0))


def test_chunked_epoch_deals_each_identitys_images_in_disjoint_chunks_of_k():
    labels, camids = dataset(num_ids=60, seed=4)
    sampler = ChunkedIdentitySampler(labels, 8, 3, seed=1)
    for epoch in range(3):
        batches = list(sampler.epoch(epoch))
        assert 1 <= len(batches) <= len(sampler)
        used: dict[int, list[int]] = {}
        for batch in batches:
            ids, counts = np.unique(labels[batch], return_counts=True)
            assert len(ids) == 8 and set(counts) == {3}
            for pid in ids:
                used.setdefault(int(pid), []).extend(batch[labels[batch] == pid].tolist())
        left = 0
        for pid in np.unique(labels):
            n, picked = int((labels == pid).sum()), used.get(int(pid), [])
            if n < 3:  # one chunk, drawn with replacement
                assert len(picked) in (0, 3) and set(picked) <= set(np.flatnonzero(labels == pid))
                left += not picked
            else:  # chunks never repeat an image within the epoch
                assert len(picked) == len(set(picked)) <= n // 3 * 3
                left += len(picked) < n // 3 * 3
        assert left < 8  # the epoch ends when fewer than P identities have a chunk left


@pytest.mark.parametrize("kind", ["pk", "camera", "chunked"])
def test_batches_stream_epoch_after_epoch_from_any_start(kind):
    labels, camids = dataset()
    sampler = make(kind, labels, camids, 8, 4, seed=6)
    stream = sampler.batches()
    first = [next(stream) for _ in range(17)]
    expected = [b for e in range(5) for b in sampler.epoch(e)][:17]
    for a, b in zip(first, expected, strict=True):
        np.testing.assert_array_equal(a, b)
    resumed = sampler.batches(start=11)
    for a in first[11:]:
        np.testing.assert_array_equal(next(resumed), a)


def test_pk_draws_without_replacement_unless_an_identity_has_too_few_images():
    labels = np.repeat(np.arange(6), [2, 5, 5, 5, 5, 5])
    sampler = PKSampler(labels, 6, 3, seed=0)
    (batch,) = sampler.epoch(0)
    short = batch[labels[batch] == 0]
    assert len(short) == 3 and set(short) <= {0, 1}
    for pid in range(1, 6):
        assert len(set(batch[labels[batch] == pid])) == 3


def test_camera_balanced_covers_min_k_and_cameras_evenly():
    labels, camids = dataset()
    sampler = CameraBalancedSampler(labels, camids, 8, 4, seed=1)
    for epoch in range(3):
        for batch in sampler.epoch(epoch):
            for pid in np.unique(labels[batch]):
                picked = batch[labels[batch] == pid]
                n_cams = len(np.unique(camids[labels == pid]))
                _, per_cam = np.unique(camids[picked], return_counts=True)
                assert len(per_cam) == min(4, n_cams)
                assert per_cam.max() - per_cam.min() <= 1


def test_camera_balanced_does_not_repeat_an_image_before_its_camera_is_exhausted():
    labels = np.repeat([0, 1], 9)
    camids = np.tile([0, 0, 0, 1, 1, 1, 1, 1, 1], 2)  # camera 0: 3 images, camera 1: 6
    sampler = CameraBalancedSampler(labels, camids, 2, 8, seed=0)
    for epoch in range(5):
        (batch,) = sampler.epoch(epoch)
        for pid in (0, 1):
            picked = batch[labels[batch] == pid]
            cam0, cam1 = picked[camids[picked] == 0], picked[camids[picked] == 1]
            assert len(cam0) == len(cam1) == 4
            assert len(set(cam0)) == 3 and len(set(cam1)) == 4


@pytest.mark.parametrize("kind", ["pk", "camera", "chunked"])
@pytest.mark.parametrize("world_size", [2, 4])
def test_ranks_split_the_single_process_batch_into_whole_identities(kind, world_size):
    labels, camids = dataset()
    single = make(kind, labels, camids, 8, 3, seed=5)
    ranks = [
        make(kind, labels, camids, 8, 3, seed=5, rank=r, world_size=world_size)
        for r in range(world_size)
    ]
    assert {len(s) for s in ranks} == {len(single)}
    assert {s.batch_size for s in ranks} == {8 // world_size * 3}
    for epoch in (0, 1):
        per_rank = [list(s.epoch(epoch)) for s in ranks]
        for step, batch in enumerate(single.epoch(epoch)):
            np.testing.assert_array_equal(np.concatenate([b[step] for b in per_rank]), batch)
        if kind != "chunked":  # one visit per identity and epoch: the ranks' ids are disjoint
            rank_ids = [set(labels[np.concatenate(b)]) for b in per_rank]
            assert sum(len(ids) for ids in rank_ids) == len(set().union(*rank_ids))


def test_ids_per_batch_not_divisible_by_world_size_is_an_error():
    labels, camids = dataset()
    with pytest.raises(ValueError, match="divisible by the world size"):
        PKSampler(labels, 6, 4, rank=1, world_size=4)
    with pytest.raises(ValueError, match="rank 4"):
        PKSampler(labels, 8, 4, rank=4, world_size=4)


@pytest.mark.parametrize("kind", ["pk", "camera", "chunked"])
def test_starting_mid_epoch_gives_the_tail_of_the_epoch(kind):
    labels, camids = dataset()
    sampler = make(kind, labels, camids, 8, 4, seed=2, rank=1, world_size=2)
    full = list(sampler.epoch(3))
    tail = list(sampler.epoch(3, start=2))
    assert len(tail) == len(full) - 2
    for a, b in zip(full[2:], tail, strict=True):
        np.testing.assert_array_equal(a, b)


def test_create_sampler_picks_the_configured_kind():
    labels, camids = dataset()
    config = SolverConfig(ids_per_batch=8, images_per_id=2, seed=9)
    assert type(create_sampler(config, labels, camids)) is PKSampler
    balanced = config.model_copy(update={"sampler": "camera_balanced"})
    sampler = create_sampler(balanced, labels, camids, rank=1, world_size=2)
    assert type(sampler) is CameraBalancedSampler
    assert (sampler.seed, sampler.p, sampler.k, sampler.rank) == (9, 8, 2, 1)
    with pytest.raises(ValueError, match="camera ids"):
        create_sampler(balanced, labels, None)
    chunked = config.model_copy(update={"sampler": "chunked"})
    assert type(create_sampler(chunked, labels, None)) is ChunkedIdentitySampler
