"""MobileNetV3 large and small (Howard et al. 2019, "Searching for MobileNetV3").

Inverted residual blocks (1×1 expand → depthwise k×k → optional squeeze-excite → linear 1×1
project, residual when shape is kept) with the paper's tables, hardswish in the later
layers, SE with a hardsigmoid gate and squeeze width `make_divisible(expanded / 4, 8)`. The
backbone ends at the last 1×1 conv (960 channels large, 576 small, hardswish); the ImageNet
classifier (pool → 1280/1024 FC → logits) is not part of it. Parameters: 2,971,952 (large)
and 927,008 (small), i.e. torchvision's 5.48M / 2.54M minus its classifier.

`last_stride=1` (the re-id default, as for ResNet) removes the stride of the last strided
block (no dilation): output stride 16 instead of 32, e.g. 16×8 instead of 8×4 at 256×128.

Module names follow torchvision's `mobilenet_v3_large/small` so its ImageNet checkpoints load
key for key (the pretrained loader drops their `classifier.*`):

    features.0.0.weight, features.0.1.*         stem 3×3/2 conv (16) + BN (hardswish)
    features.{i}.block.{j}.0.weight, .1.*       inverted residual i = 1..n; conv j + BN, where
                                                j runs over [expand (only if expanded !=
                                                input)], depthwise, [SE], project
    features.{i}.block.{j}.fc1/fc2.weight/bias  the SE module (1×1 convs with bias)
    features.{n+1}.0.weight, features.{n+1}.1.* last 1×1 conv (960 / 576) + BN (hardswish)

The paper's small table marks SE on the last 1×1 conv; the reference implementations
(TF-slim, torchvision) have none there, and neither has this one.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from reid_core.modeling.backbones.registry import BackboneOptions, register_backbone, reject_options

BN_EPS, BN_MOMENTUM = 1e-3, 0.01  # the reference (TF) BN settings, as in torchvision


class BlockSpec(NamedTuple):
    kernel: int
    expanded: int
    out: int
    se: bool
    hardswish: bool  # False: ReLU
    stride: int


_B = BlockSpec
# Howard et al. 2019, Table 1 (large) and Table 2 (small): kernel, exp size, #out, SE, NL, s.
LARGE = (
    _B(3, 16, 16, False, False, 1),
    _B(3, 64, 24, False, False, 2),
    _B(3, 72, 24, False, False, 1),
    _B(5, 72, 40, True, False, 2),
    _B(5, 120, 40, True, False, 1),
    _B(5, 120, 40, True, False, 1),
    _B(3, 240, 80, False, True, 2),
    _B(3, 200, 80, False, True, 1),
    _B(3, 184, 80, False, True, 1),
    _B(3, 184, 80, False, True, 1),
    _B(3, 480, 112, True, True, 1),
    _B(3, 672, 112, True, True, 1),
    _B(5, 672, 160, True, True, 2),
    _B(5, 960, 160, True, True, 1),
    _B(5, 960, 160, True, True, 1),
)
SMALL = (
    _B(3, 16, 16, True, False, 2),
    _B(3, 72, 24, False, False, 2),
    _B(3, 88, 24, False, False, 1),
    _B(5, 96, 40, True, True, 2),
    _B(5, 240, 40, True, True, 1),
    _B(5, 240, 40, True, True, 1),
    _B(5, 120, 48, True, True, 1),
    _B(5, 144, 48, True, True, 1),
    _B(5, 288, 96, True, True, 2),
    _B(5, 576, 96, True, True, 1),
    _B(5, 576, 96, True, True, 1),
)
VARIANTS = {
    "mobilenetv3_large": (LARGE, 960),
    "mobilenetv3_small": (SMALL, 576),
}
STEM_CHANNELS = 16


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round to the nearest multiple of `divisor` (at least `divisor`), never 10% below."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def conv_bn(
    cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: type | None = None
) -> nn.Sequential:
    """Conv (no bias) → BN → activation as `Sequential`, giving keys `0.weight`, `1.*`."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM),
    ]
    if act is not None:
        # Out of place on purpose: the ONNX exporter keeps aten.hardswish as one HardSwish op,
        # while the in-place form is decomposed into elementwise ops (and exports 3× slower).
        layers.append(act())
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    """SE: x · hardsigmoid(fc2(ReLU(fc1(avgpool(x))))) with 1×1 convs as the FCs."""

    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.relu(self.fc1(x.mean((2, 3), keepdim=True)))))


class InvertedResidual(nn.Module):
    """Expand (1×1) → depthwise (k×k, stride) → [SE] → project (1×1, linear) [+ input]."""

    def __init__(self, cin: int, spec: BlockSpec, stride: int):
        super().__init__()
        act = nn.Hardswish if spec.hardswish else nn.ReLU
        layers: list[nn.Module] = []
        if spec.expanded != cin:
            layers.append(conv_bn(cin, spec.expanded, 1, act=act))
        layers.append(
            conv_bn(spec.expanded, spec.expanded, spec.kernel, stride, spec.expanded, act=act)
        )
        if spec.se:
            layers.append(SqueezeExcite(spec.expanded, make_divisible(spec.expanded // 4)))
        layers.append(conv_bn(spec.expanded, spec.out, 1))
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == spec.out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_residual else out


class MobileNetV3(nn.Module):
    """MobileNetV3 feature-map extractor; `out_channels` = width of the last 1×1 conv."""

    def __init__(self, specs: tuple[BlockSpec, ...], last_channels: int, last_stride: int = 2):
        super().__init__()
        if last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, got {last_stride}")
        last_strided = max(i for i, spec in enumerate(specs) if spec.stride > 1)
        layers: list[nn.Module] = [conv_bn(3, STEM_CHANNELS, 3, 2, act=nn.Hardswish)]
        cin = STEM_CHANNELS
        for i, spec in enumerate(specs):
            stride = last_stride if i == last_strided else spec.stride
            layers.append(InvertedResidual(cin, spec, stride))
            cin = spec.out
        layers.append(conv_bn(cin, last_channels, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.out_channels = last_channels
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def _build(name: str):
    specs, last_channels = VARIANTS[name]

    def build(options: BackboneOptions) -> nn.Module:
        reject_options(name, options, {"last_stride"})
        return MobileNetV3(specs, last_channels, options.last_stride)

    return build


for _name in VARIANTS:
    register_backbone(_name)(_build(_name))
