"""Batched training augmentation: which ops run, what each does, and its seeding."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reid_core.config import AugmentConfig
from reid_core.engine.augment import (
    ERASING_BOXES,
    AugMix,
    AutoAugment,
    BatchAugment,
    ColorJitter,
    Cutout,
    PadCrop,
    RandomErasing,
    RandomFlip,
    RandomPatch,
    _box_sizes,
    cutout_side,
)
from reid_core.engine.augmix import augmix_chains, augmix_mix
from reid_core.modeling.model import PIXEL_MEAN

H, W = 64, 32
PROBS = [
    "flip_p",
    "erasing_p",
    "patch_p",
    "cutout_p",
    "color_jitter_p",
    "autoaugment_p",
    "augmix_p",
]
OFF = {name: 0.0 for name in PROBS} | {"pad": 0}
ALL_ON = {name: 0.5 for name in PROBS} | {"pad": 4}
OP_CLASSES = [RandomFlip, ColorJitter, AutoAugment, AugMix, RandomPatch, RandomErasing, Cutout]


def only(**options: float) -> AugmentConfig:
    return AugmentConfig(**(OFF | options))


def images(n: int = 8, seed: int = 0) -> torch.Tensor:
    # A private generator, so building inputs never moves torch's global one.
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, H, W), dtype=torch.uint8, generator=gen)


def run(config: AugmentConfig, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    return BatchAugment(config, H, W)(x)


def changed_images(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (out != x.float()).flatten(1).any(dim=1)


def bbox(mask: torch.Tensor) -> tuple[int, int, int, int]:
    rows = mask.any(dim=1).nonzero().flatten()
    cols = mask.any(dim=0).nonzero().flatten()
    top, left = int(rows[0]), int(cols[0])
    return top, left, int(rows[-1]) - top + 1, int(cols[-1]) - left + 1


def occurs_in(patch: torch.Tensor, image: torch.Tensor) -> bool:
    """Whether `patch` (C×h×w) equals some window of `image` (C×H×W)."""
    _, h, w = patch.shape
    corner = image[:, : image.shape[1] - h + 1, : image.shape[2] - w + 1] == patch[:, :1, :1]
    starts = corner.all(dim=0).nonzero().tolist()
    return any(torch.equal(image[:, y : y + h, x : x + w], patch) for y, x in starts)


def test_default_config_builds_only_flip_crop_and_erasing():
    ops = BatchAugment(AugmentConfig(), H, W).ops
    assert [type(op) for op in ops] == [RandomFlip, PadCrop, RandomErasing]


def test_ops_run_geometric_then_photometric_then_erasing():
    ops = BatchAugment(AugmentConfig(**ALL_ON), H, W).ops
    assert [type(op) for op in ops] == [
        RandomFlip,
        PadCrop,
        ColorJitter,
        AutoAugment,
        AugMix,
        RandomPatch,
        RandomErasing,
        Cutout,
    ]


@pytest.mark.parametrize("name", PROBS)
def test_op_with_p_zero_is_not_built_and_changes_nothing(name):
    x = images()
    augment = BatchAugment(only(**{name: 0.0}), H, W)
    assert len(augment.ops) == 0
    out = augment(x)
    assert out.dtype == torch.float32
    assert torch.equal(out, x.float())


@pytest.mark.parametrize("op_class", OP_CLASSES)
def test_op_module_with_p_zero_returns_its_input(op_class):
    x = images().float()
    assert torch.equal(op_class(0.0)(x), x)


@pytest.mark.parametrize(
    "name", ["flip_p", "erasing_p", "patch_p", "cutout_p", "color_jitter_p", "augmix_p"]
)
def test_op_with_p_one_changes_every_image(name):
    x = images(16)
    out = run(only(**{name: 1.0}), x)
    assert changed_images(out, x).all()


def test_autoaugment_draws_a_subpolicy_for_every_image():
    augment = BatchAugment(only(autoaugment_p=1.0), H, W)
    rows: list[int] = []
    for subpolicy in augment.ops[0].policy.children():
        subpolicy.register_forward_pre_hook(lambda _, args: rows.append(args[0].shape[0]))
    x = images(32)
    torch.manual_seed(0)
    out = augment(x)
    assert sum(rows) == 32  # every image went through one sub-policy
    assert len(rows) > 1  # not one sub-policy for the whole batch
    # A sub-policy's ops fire with their own probabilities, so a few images may pass unchanged.
    assert changed_images(out, x).float().mean() > 0.5


def test_flip_mirrors_chosen_images_exactly():
    x = images(32)
    out = run(only(flip_p=0.5), x)
    same = (out == x.float()).flatten(1).all(dim=1)
    mirrored = (out == x.float().flip(-1)).flatten(1).all(dim=1)
    assert (same | mirrored).all()
    assert same.any() and mirrored.any()


def test_pad_crop_shifts_each_image_within_the_padding():
    pad = 4
    x = images(16)
    out = run(only(pad=pad), x)
    padded = F.pad(x.float(), (pad,) * 4, value=0.0)
    shifts = set()
    for i in range(len(x)):
        found = [
            (dy, dx)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            if torch.equal(out[i], padded[i, :, dy : dy + H, dx : dx + W])
        ]
        assert len(found) == 1
        shifts.add(found[0])
    assert len(shifts) > 1


def test_erased_pixels_equal_the_mean_pixel_exactly():
    x = torch.zeros(16, 3, H, W, dtype=torch.uint8)
    out = run(only(erasing_p=1.0), x)
    mean = torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1)
    erased = (out != 0).any(dim=1)
    for i in range(len(x)):
        # the model subtracts this very mean: erased pixels become exactly zero
        assert torch.equal((out[i] - mean[0])[:, erased[i]], torch.zeros(3, int(erased[i].sum())))
        top, left, h, w = bbox(erased[i])
        assert int(erased[i].sum()) == h * w  # one solid box
        assert 0.02 * H * W * 0.5 <= h * w <= 0.4 * H * W * 1.5


def reference_boxes(n: int, height: int, width: int, box: str, seed: int = 0) -> np.ndarray:
    """(h, w) per image by the written definition: up to 10 draws of area fraction and aspect
    (linear, or log-uniform for torchvision's), the first that fits strictly inside; (0, 0) when
    none fits and the box is optional."""
    dist = ERASING_BOXES[box]
    rng = np.random.default_rng(seed)
    out = np.zeros((n, 2))
    for i in range(n):
        for _ in range(10):
            area = rng.uniform(*dist.area) * height * width
            lo, hi = dist.aspect
            aspect = (
                np.exp(rng.uniform(np.log(lo), np.log(hi)))
                if dist.log_aspect
                else rng.uniform(lo, hi)
            )
            h, w = round(np.sqrt(area * aspect)), round(np.sqrt(area / aspect))
            if 1 <= h < height and 1 <= w < width:
                out[i] = h, w
                break
    return out


@pytest.mark.parametrize("box", ["zhong", "torchvision"])
@pytest.mark.parametrize(("height", "width"), [(256, 128), (24, 24)])
def test_erasing_box_sizes_follow_their_definition(box, height, width):
    n = 20000
    torch.manual_seed(0)
    h, w, gets_box = _box_sizes(n, height, width, ERASING_BOXES[box], torch.device("cpu"))
    gets_box = gets_box.flatten().numpy()
    ours = np.stack([h.numpy(), w.numpy()], axis=1)[gets_box]
    ref = reference_boxes(n, height, width, box)
    ref_boxed = ref[ref[:, 0] > 0]
    if box == "torchvision":
        assert abs(gets_box.mean() - len(ref_boxed) / n) < 0.01
    else:
        assert gets_box.all()  # Zhong's box is always placed (clipped when no draw fits: rare)
        ref = ref_boxed
    for stat in (
        lambda b: (b[:, 0] < b[:, 1]).mean(),  # wider than tall
        lambda b: (b[:, 0] * b[:, 1]).mean() / (height * width),  # area fraction
    ):
        assert abs(stat(ours) - stat(ref)) < 0.015


def test_torchvision_erasing_leaves_an_image_alone_when_no_box_fits_and_zhong_clips():
    x = torch.zeros(32, 3, 1, 40, dtype=torch.uint8)  # one row: no box fits strictly inside
    torch.manual_seed(0)
    assert torch.equal(RandomErasing(1.0, "torchvision")(x.float()), x.float())
    torch.manual_seed(0)
    assert changed_images(RandomErasing(1.0, "zhong")(x.float()), x).all()


def test_unknown_erasing_box_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown erasing box 'square'"):
        RandomErasing(0.5, "square")


def test_cutout_square_has_the_documented_side():
    side = cutout_side(H, W)
    assert side == int(0.5 * min(H, W))
    x = torch.full((64, 3, H, W), 7, dtype=torch.uint8)
    out = run(only(cutout_p=1.0), x)
    cut = (out == torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1)).all(dim=1)
    assert ((out == 7) | cut[:, None]).all()
    full_squares = 0
    for i in range(len(x)):
        top, left, h, w = bbox(cut[i])
        assert int(cut[i].sum()) == h * w
        assert h <= side and w <= side
        if top > 0 and top + h < H:
            assert h == side
        if left > 0 and left + w < W:
            assert w == side
        full_squares += h * w == side * side
    assert full_squares > 0


def test_random_patch_takes_a_constant_patch_from_another_image():
    n = 8
    colours = torch.arange(n).view(n, 1, 1, 1) * 20 + torch.arange(3).view(1, 3, 1, 1)
    x = colours.expand(n, 3, H, W).to(torch.uint8).contiguous()
    out = run(only(patch_p=1.0), x)
    for i in range(n):
        pasted = (out[i] != x[i].float()).any(dim=0)
        donors = {int(v) // 20 for v in out[i, 0][pasted].unique()}
        assert len(donors) == 1 and donors != {i}
        top, left, h, w = bbox(pasted)
        assert int(pasted.sum()) == h * w


def test_random_patch_content_is_a_window_of_another_image():
    x = images(6, seed=3)
    out = run(only(patch_p=1.0), x, seed=1)
    for i in range(len(x)):
        pasted = (out[i] != x[i].float()).any(dim=0)
        top, left, h, w = bbox(pasted)
        patch = out[i, :, top : top + h, left : left + w]
        matches = [
            j
            for j in range(len(x))
            for candidate in (patch, patch.flip(-1))
            if occurs_in(candidate, x[j].float())
        ]
        assert matches and i not in matches


def test_augmix_mix_with_zero_weight_returns_the_original():
    gen = torch.Generator().manual_seed(0)
    original = torch.rand(4, 3, H, W, generator=gen)
    chains = torch.rand(3, 4, 3, H, W, generator=gen)
    weights = torch.full((4, 3), 1 / 3)
    assert torch.equal(augmix_mix(original, chains, weights, torch.zeros(4)), original)


def test_augmix_mix_is_the_convex_combination_of_its_inputs():
    gen = torch.Generator().manual_seed(0)
    original = torch.rand(4, 3, H, W, generator=gen)
    chains = torch.rand(3, 4, 3, H, W, generator=gen)
    one_hot = torch.eye(3)[[1, 0, 2, 1]]
    picked = augmix_mix(original, chains, one_hot, torch.ones(4))
    assert torch.equal(picked, chains[[1, 0, 2, 1], torch.arange(4)])
    weights = torch.tensor([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0], [0.1, 0.1, 0.8], [0.6, 0.2, 0.2]])
    m = torch.tensor([0.25, 0.5, 0.9, 0.0])
    out = augmix_mix(original, chains, weights, m)
    expected = (1 - m.view(4, 1, 1, 1)) * original + m.view(4, 1, 1, 1) * torch.einsum(
        "mk,kmchw->mchw", weights, chains
    )
    torch.testing.assert_close(out, expected)
    stacked = torch.cat([original[None], chains])
    assert (out >= stacked.amin(0) - 1e-6).all() and (out <= stacked.amax(0) + 1e-6).all()


def test_augmix_chains_stay_in_unit_range_and_change_most_copies():
    x = images(8).float() / 255
    torch.manual_seed(0)
    chains = augmix_chains(x, width=3, max_depth=3)
    assert chains.shape == (3, 8, 3, H, W)
    assert chains.min() >= 0 and chains.max() <= 1
    # A one-op chain can be a no-op (autocontrast of a full-range image, say), so not all.
    assert (chains != x[None]).flatten(2).any(-1).float().mean() > 0.75


def test_same_seed_gives_identical_output_and_another_seed_differs():
    x = images(8)
    config = AugmentConfig(**ALL_ON)
    first, again = run(config, x, seed=0), run(config, x, seed=0)
    assert torch.equal(first, again)
    assert not torch.equal(first, run(config, x, seed=1))


def test_restoring_the_torch_rng_state_resumes_exactly_and_no_other_rng_is_used():
    x = images(8)
    augment = BatchAugment(AugmentConfig(**ALL_ON), H, W)
    torch.manual_seed(0)
    augment(x)
    python_state, numpy_state = random.getstate(), np.random.get_state()
    state = torch.get_rng_state()
    resumed = augment(x)
    following = augment(x)
    torch.set_rng_state(state)
    assert torch.equal(augment(x), resumed)
    assert not torch.equal(resumed, following)
    assert random.getstate() == python_state
    assert np.array_equal(np.random.get_state()[1], numpy_state[1])


def test_one_image_batch_runs_every_op():
    x = images(1)
    out = run(AugmentConfig(**{name: 1.0 for name in PROBS}, pad=4), x)
    assert out.shape == (1, 3, H, W)
    assert out.min() >= 0 and out.max() <= 255


def test_output_is_float32_in_range_with_the_input_shape():
    x = images(8)
    x[:4] = 0
    x[4:] = 255
    out = run(AugmentConfig(**{name: 1.0 for name in PROBS}, pad=6), x)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert out.min() >= 0 and out.max() <= 255


def test_eval_mode_returns_the_images_as_float():
    x = images(4)
    augment = BatchAugment(AugmentConfig(**ALL_ON), H, W).eval()
    assert torch.equal(augment(x), x.float())


def test_a_batch_of_another_size_is_rejected():
    with pytest.raises(ValueError, match="batch"):
        BatchAugment(AugmentConfig(), H, W)(torch.zeros(2, 3, H + 1, W, dtype=torch.uint8))
