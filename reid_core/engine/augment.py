"""Training augmentation applied to whole batches on the training device.

`BatchAugment` takes the uint8 N×3×H×W batch the trainer moved to its device and returns float
0–255 pixels. The order follows FastReID: geometric ops (flip, pad + random crop), then photometric
ops and policies (colour jitter, AutoAugment, AugMix), then erasing-type ops (random patch, random
erasing, cutout). An op whose probability is 0 is not built at all, so the default config runs
exactly flip + pad-crop + erasing.

Every op is vectorised over the batch and draws its randomness from torch's global generator of
the batch's device only: our own draws pass `device=images.device`, and kornia's AutoAugment
module is moved to that device, which moves kornia's samplers with it (the other ops use kornia's
functional ops). Nothing reads Python's or NumPy's generators, so `torch.manual_seed` before a
call reproduces it bit for bit, and saving/restoring `torch.get_rng_state()`
(`torch.cuda.get_rng_state()` for a GPU batch) resumes the stream exactly.

Strengths and sizes are module-level constants (AugmentConfig holds only the probabilities).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from kornia.augmentation.auto import AutoAugment as KorniaAutoAugment
from kornia.enhance import (
    adjust_brightness_accumulative,
    adjust_contrast_with_mean_subtraction,
    adjust_hue,
    adjust_saturation_with_gray_subtraction,
)
from torch import nn

from reid_core.engine.augmix import augmix
from reid_core.modeling.model import PIXEL_MEAN
from reid_core.options import AugmentConfig
from reid_core.registry import Registry

PAD_FILL = 0.0  # pad-crop fills the border black, like FastReID's constant padding

BOX_ATTEMPTS = 10  # box draws per image; the first that fits is used (see _box_sizes)


@dataclass(frozen=True)
class BoxDistribution:
    """How an erasing-type op draws its box's size.

    The area is a uniform fraction of the image in `area`; the aspect h/w is uniform in `aspect`,
    or uniform in log space with `log_aspect`. Of BOX_ATTEMPTS draws the first that fits strictly
    inside the image is used; when none fits, `always` clips the last draw to the image (so the
    op's probability is exactly its `p`), otherwise that image is left as it is.
    """

    area: tuple[float, float]
    aspect: tuple[float, float]
    log_aspect: bool = False
    always: bool = True


# Random erasing's box, by AugmentConfig.erasing_box: Zhong et al. 2020's (linear aspect from 0.3
# to 1/0.3, areas to 40 %, always a box) and torchvision's, which FastReID uses (areas to 33 %,
# log-uniform aspect from 0.3 to 3.3, no box when none of 10 draws fits).
ERASING_BOXES = {
    "zhong": BoxDistribution(area=(0.02, 0.4), aspect=(0.3, 1 / 0.3)),
    "torchvision": BoxDistribution(
        area=(0.02, 0.33), aspect=(0.3, 3.3), log_aspect=True, always=False
    ),
}

# Random patch (Zhou et al. 2019, FastReID's RandomPatch defaults).
PATCH_BOX = BoxDistribution(area=(0.01, 0.5), aspect=(0.1, 10.0))
PATCH_FLIP_P = 0.5  # the pasted patch is mirrored with this probability

# Cutout (DeVries & Taylor 2017): side of the square as a fraction of the shorter image side.
CUTOUT_SIDE_FRACTION = 0.5

# Colour jitter strengths (FastReID's defaults): factors 1 ± strength, hue ± turns.
JITTER_BRIGHTNESS = 0.15
JITTER_CONTRAST = 0.15
JITTER_SATURATION = 0.1
JITTER_HUE = 0.1  # fraction of a full turn


def _mean_pixel(like: torch.Tensor) -> torch.Tensor:
    """The ImageNet mean pixel on 0–255 as 1×3×1×1, zero after the model's normalisation."""
    return torch.tensor(PIXEL_MEAN, dtype=like.dtype, device=like.device).view(1, 3, 1, 1)


def cutout_side(height: int, width: int) -> int:
    """Side in pixels of the cutout square for an image of this size."""
    return max(1, int(CUTOUT_SIDE_FRACTION * min(height, width)))


def _on_subset(
    x: torch.Tensor, p: float, fn: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """Apply `fn` (on [0, 1] pixels) to each image of a 0–255 batch with probability `p`.

    Only the chosen images are computed and rewritten; the others are returned bit for bit.
    """
    chosen = (torch.rand(x.shape[0], device=x.device) < p).nonzero().squeeze(1)
    if chosen.numel() == 0:
        return x
    out = fn(x.index_select(0, chosen) / 255.0)
    return x.index_copy(0, chosen, (out * 255.0).clamp_(0.0, 255.0))


def _chosen(n: int, p: float, device: torch.device) -> torch.Tensor:
    """N×1×1×1 mask: which images an op with probability `p` applies to."""
    return (torch.rand(n, device=device) < p).view(n, 1, 1, 1)


def _box_sizes(
    n: int, height: int, width: int, box: BoxDistribution, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image the (h, w) of a box drawn from `box`, and whether the image gets it (N×1×1×1)."""
    shape = (n, BOX_ATTEMPTS)
    lo, hi = box.area
    target = (lo + (hi - lo) * torch.rand(shape, device=device)) * (height * width)
    if box.log_aspect:
        lo, hi = math.log(box.aspect[0]), math.log(box.aspect[1])
        aspect = (lo + (hi - lo) * torch.rand(shape, device=device)).exp()
    else:
        lo, hi = box.aspect
        aspect = lo + (hi - lo) * torch.rand(shape, device=device)
    h = (target * aspect).sqrt().round().long()
    w = (target / aspect).sqrt().round().long()
    fits = (h >= 1) & (h < height) & (w >= 1) & (w < width)
    first = fits.int().argmax(dim=1, keepdim=True)  # index of the first fitting draw, else 0
    any_fit = fits.any(dim=1)
    h = torch.where(any_fit, h.gather(1, first)[:, 0], h[:, -1].clamp(1, max(height - 1, 1)))
    w = torch.where(any_fit, w.gather(1, first)[:, 0], w[:, -1].clamp(1, max(width - 1, 1)))
    gets_box = torch.ones_like(any_fit) if box.always else any_fit
    return h, w, gets_box.view(n, 1, 1, 1)


def _box_start(size: torch.Tensor, extent: int) -> torch.Tensor:
    """Uniform start in [0, extent − size] per box."""
    start = (torch.rand(size.shape, device=size.device) * (extent - size + 1)).floor().long()
    return torch.minimum(start, extent - size)  # float rounding can reach extent − size + 1


def _box_mask(
    top: torch.Tensor, left: torch.Tensor, h: torch.Tensor, w: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """N×1×H×W mask of the boxes [top, top+h) × [left, left+w), clipped to the image."""
    rows = torch.arange(height, device=top.device)
    cols = torch.arange(width, device=top.device)
    in_rows = (rows >= top[:, None]) & (rows < (top + h)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + w)[:, None])
    return (in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1)


class _PerImageOp(nn.Module):
    """An augmentation applied to each image independently with probability `p`."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def extra_repr(self) -> str:
        return f"p={self.p}"


class RandomFlip(_PerImageOp):
    """Mirror each image left-right with probability `p`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, width = x.shape[0], x.shape[-1]
        cols = torch.arange(width, device=x.device)
        cols = torch.where(_chosen(n, self.p, x.device).view(n, 1), width - 1 - cols, cols)
        return x.gather(3, cols[:, None, None, :].expand_as(x))  # one pass, no flipped copy


class PadCrop(nn.Module):
    """Pad every image by `pad` pixels (PAD_FILL) and crop a random window of the original size."""

    def __init__(self, pad: int):
        super().__init__()
        self.pad = pad

    def extra_repr(self) -> str:
        return f"pad={self.pad}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, height, width = x.shape
        pad = self.pad
        oy = torch.randint(2 * pad + 1, (n,), device=x.device)
        ox = torch.randint(2 * pad + 1, (n,), device=x.device)
        padded = F.pad(x, (pad, pad, pad, pad), value=PAD_FILL).flatten(2)
        rows = oy[:, None, None] + torch.arange(height, device=x.device)[:, None]
        cols = ox[:, None, None] + torch.arange(width, device=x.device)
        index = (rows * (width + 2 * pad) + cols).view(n, 1, -1).expand(n, c, -1)
        return padded.gather(2, index).view(n, c, height, width)


class ColorJitter(_PerImageOp):
    """Colour jitter with torchvision's (and kornia's ColorJitter's) semantics, prob. `p` per image.

    Brightness, contrast and saturation factors are drawn from 1 ± strength, hue from ± JITTER_HUE
    turns, per image; the four steps run in a random order per call. kornia's ColorJitter module
    draws that order with a CPU `randperm` whatever the device, so the same kornia.enhance steps
    are composed here with every draw on the batch's device.
    """

    def extra_repr(self) -> str:
        return (
            f"p={self.p}, brightness={JITTER_BRIGHTNESS}, contrast={JITTER_CONTRAST}, "
            f"saturation={JITTER_SATURATION}, hue={JITTER_HUE}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _on_subset(x, self.p, self._jitter)

    @staticmethod
    def _jitter(x: torch.Tensor) -> torch.Tensor:
        m, device = x.shape[0], x.device

        def around(centre: float, strength: float) -> torch.Tensor:
            return centre + strength * (2 * torch.rand(m, device=device) - 1)

        brightness = around(1.0, JITTER_BRIGHTNESS)
        contrast = around(1.0, JITTER_CONTRAST)
        saturation = around(1.0, JITTER_SATURATION)
        hue = around(0.0, JITTER_HUE) * (2 * math.pi)
        steps = (
            lambda y: adjust_brightness_accumulative(y, brightness),
            lambda y: adjust_contrast_with_mean_subtraction(y, contrast),
            lambda y: adjust_saturation_with_gray_subtraction(y, saturation),
            lambda y: adjust_hue(y, hue),
        )
        for step in torch.randperm(len(steps), device=device).tolist():
            x = steps[step](x)
        return x.clamp(0.0, 1.0)


class AutoAugment(_PerImageOp):
    """AutoAugment's ImageNet policy (kornia's) on each image with probability `p`.

    kornia's AutoAugment draws one sub-policy per call for the whole batch; here every chosen image
    draws its own, as in Cubuk et al. and torchvision, and the images are grouped by sub-policy.
    Within a sub-policy each op still fires with its own policy probability, so a chosen image can
    come back unchanged. Magnitudes follow kornia: each bin spans its tenth of the paper's range.
    """

    def __init__(self, p: float):
        super().__init__(p)
        self.policy = KorniaAutoAugment("imagenet")
        self._rng_device = torch.device("cpu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device != self._rng_device:
            self.policy.to(x.device)  # kornia re-creates its samplers on the module's device
            self._rng_device = x.device
        return _on_subset(x, self.p, self._apply_policy)

    def _apply_policy(self, x: torch.Tensor) -> torch.Tensor:
        subpolicies = list(self.policy.children())
        which = torch.randint(len(subpolicies), (x.shape[0],), device=x.device)
        out = x.clone()
        for k, subpolicy in enumerate(subpolicies):
            idx = (which == k).nonzero().squeeze(1)
            if idx.numel():
                out.index_copy_(0, idx, subpolicy(x.index_select(0, idx)))
        return out


class AugMix(_PerImageOp):
    """AugMix (see reid_core.engine.augmix) on each image with probability `p`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _on_subset(x, self.p, augmix)


class RandomPatch(_PerImageOp):
    """Paste a random rectangle cut from another image of the batch, with probability `p`.

    FastReID's RandomPatch draws patches from a pool filled over past iterations; here the pool is
    the current batch: each image takes its patch from a different, random image of the same batch
    (from itself only in a 1-image batch), mirrored with probability PATCH_FLIP_P, and pastes it at
    a random place. FastReID's random patch rotation is left out.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, height, width = x.shape
        device = x.device
        chosen = _chosen(n, self.p, device)
        donor = torch.arange(n, device=device) + torch.randint(1, max(n, 2), (n,), device=device)
        donor = donor % n
        h, w, gets_box = _box_sizes(n, height, width, PATCH_BOX, device)
        src_top, src_left = _box_start(h, height), _box_start(w, width)
        top, left = _box_start(h, height), _box_start(w, width)
        mirror = torch.rand(n, device=device) < PATCH_FLIP_P
        # Source pixel of every target pixel; only those inside the target box are used.
        rows = torch.arange(height, device=device)
        cols = torch.arange(width, device=device)
        src_rows = (src_top[:, None] + rows - top[:, None]).clamp(0, height - 1)
        dc = cols - left[:, None]
        dc = torch.where(mirror[:, None], w[:, None] - 1 - dc, dc)
        src_cols = (src_left[:, None] + dc).clamp(0, width - 1)
        index = (src_rows[:, :, None] * width + src_cols[:, None, :]).view(n, 1, -1)
        pasted = x[donor].flatten(2).gather(2, index.expand(n, c, -1)).view_as(x)
        mask = _box_mask(top, left, h, w, height, width) & chosen & gets_box
        return torch.where(mask, pasted, x)


class RandomErasing(_PerImageOp):
    """Random erasing: set a random box (`box`, see ERASING_BOXES) to the mean pixel, with
    probability `p`."""

    def __init__(self, p: float, box: str = "zhong"):
        super().__init__(p)
        if box not in ERASING_BOXES:
            raise ValueError(f"unknown erasing box '{box}'; known: {', '.join(ERASING_BOXES)}")
        self.box = box

    def extra_repr(self) -> str:
        return f"p={self.p}, box={self.box}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, height, width = x.shape
        chosen = _chosen(n, self.p, x.device)
        h, w, gets_box = _box_sizes(n, height, width, ERASING_BOXES[self.box], x.device)
        top, left = _box_start(h, height), _box_start(w, width)
        mask = _box_mask(top, left, h, w, height, width) & chosen & gets_box
        return torch.where(mask, _mean_pixel(x), x)


class Cutout(_PerImageOp):
    """Cutout (DeVries & Taylor): a square of side `cutout_side` centred at a random pixel,
    clipped at the borders, set to the mean pixel, with probability `p`."""

    def extra_repr(self) -> str:
        return f"p={self.p}, side_fraction={CUTOUT_SIDE_FRACTION}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, height, width = x.shape
        chosen = _chosen(n, self.p, x.device)
        side = cutout_side(height, width)
        top = torch.randint(height, (n,), device=x.device) - side // 2
        left = torch.randint(width, (n,), device=x.device) - side // 2
        size = torch.full((n,), side, device=x.device)
        mask = _box_mask(top, left, size, size, height, width) & chosen
        return torch.where(mask, _mean_pixel(x), x)


AUGMENTATIONS: Registry[Callable[[AugmentConfig], nn.Module | None]] = Registry("augmentation")
"""Op name -> builder(options) giving the op, or None when the options leave it off. The ops
run in registration order (geometry, colour, mixing, then occlusion)."""


@AUGMENTATIONS.register("flip")
def _flip(c: AugmentConfig) -> nn.Module | None:
    return RandomFlip(c.flip_p) if c.flip_p > 0 else None


@AUGMENTATIONS.register("pad")
def _pad(c: AugmentConfig) -> nn.Module | None:
    return PadCrop(c.pad) if c.pad > 0 else None


@AUGMENTATIONS.register("color_jitter")
def _color_jitter(c: AugmentConfig) -> nn.Module | None:
    return ColorJitter(c.color_jitter_p) if c.color_jitter_p > 0 else None


@AUGMENTATIONS.register("autoaugment")
def _autoaugment(c: AugmentConfig) -> nn.Module | None:
    return AutoAugment(c.autoaugment_p) if c.autoaugment_p > 0 else None


@AUGMENTATIONS.register("augmix")
def _augmix(c: AugmentConfig) -> nn.Module | None:
    return AugMix(c.augmix_p) if c.augmix_p > 0 else None


@AUGMENTATIONS.register("patch")
def _patch(c: AugmentConfig) -> nn.Module | None:
    return RandomPatch(c.patch_p) if c.patch_p > 0 else None


@AUGMENTATIONS.register("erasing")
def _erasing(c: AugmentConfig) -> nn.Module | None:
    return RandomErasing(c.erasing_p, c.erasing_box) if c.erasing_p > 0 else None


@AUGMENTATIONS.register("cutout")
def _cutout(c: AugmentConfig) -> nn.Module | None:
    return Cutout(c.cutout_p) if c.cutout_p > 0 else None


class BatchAugment(nn.Module):
    """uint8 N×3×H×W → float32 0–255 of the same shape, augmented as configured (see module doc).

    `ops` lists the built ops in the order they run. In eval mode, or with no op built, the result
    is exactly `images.float()`.
    """

    def __init__(self, config: AugmentConfig, height: int, width: int):
        super().__init__()
        self.height, self.width = int(height), int(width)
        built = (build(config) for build in AUGMENTATIONS.values())
        self.ops = nn.ModuleList(op for op in built if op is not None)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        expected = (3, self.height, self.width)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"expected an N×{'×'.join(map(str, expected))} batch, got {tuple(images.shape)}"
            )
        x = images.float()
        if not self.training:
            return x
        for op in self.ops:
            x = op(x)
        return x
