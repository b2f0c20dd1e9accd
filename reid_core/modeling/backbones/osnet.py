"""OSNet (Zhou et al. 2019, "Omni-Scale Feature Learning for Person Re-Identification").

Each residual bottleneck runs T=4 streams of 1..4 stacked lite 3×3 convolutions, so one block
sees receptive fields from 3×3 to 9×9 at once, and fuses them with an aggregation gate whose
weights are shared by all streams: the gate picks per channel, per image, which scales matter.

Layout (input 256×128): conv1 7×7/2 + 3×3 max pool/2 → conv2, conv3 (2 blocks each, then a
1×1 conv + 2×2 average pool transition) → conv4 (2 blocks, no transition) → conv5 (1×1 conv).
The backbone returns the conv5 map (stride 16, 16×8 at 256×128); the paper's final FC-512
layer is the head's job here. Parameters of `osnet_x1_0` without that FC: 1,905,828; the
paper's 2.2M counts FC-512 + BN too (263,680 more: 2,169,508). `osnet_x0_25`: 134,792, with
its FC-512 201,864 (published 0.2M).

OSNet-IBN (`ibn="a"`; Zhou et al., TPAMI 2021, following IBN-Net's "IN in shallow layers"):
conv1 normalises with instance norm instead of batch norm, and every block of conv2 adds an
instance norm after the residual sum; deeper stages keep batch norm only.

Key names follow the official implementation (torchreid: `conv1.conv`, `conv2.0.conv2a`,
`conv2.0.gate.fc1`, `conv2.0.IN`, `conv2.2.0` for the transition, `conv5.bn`, ...) so its
ImageNet checkpoints load as they are (the pretrained loader drops `fc.*` / `classifier.*`).
"""

from __future__ import annotations

import torch
from torch import nn

from reid_core.modeling.backbones.registry import BackboneOptions, register_backbone, reject_options

OSNET_WIDTHS = {
    "osnet_x1_0": (64, 256, 384, 512),
    "osnet_x0_25": (16, 64, 96, 128),
}
BLOCKS_PER_STAGE = 2
STREAMS = 4  # T in the paper: stream t stacks t lite 3×3 convolutions
BOTTLENECK_REDUCTION = 4
GATE_REDUCTION = 16


class ConvNormAct(nn.Module):
    """Conv → BN (or IN) → optional ReLU; `conv`/`bn` names match the official checkpoints."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        relu: bool = True,
        instance_norm: bool = False,
    ):
        super().__init__()
        padding = kernel_size // 2
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.bn = (
            nn.InstanceNorm2d(out_channels, affine=True)
            if instance_norm
            else nn.BatchNorm2d(out_channels)
        )
        self.relu = nn.ReLU(inplace=True) if relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class LiteConv3x3(nn.Module):
    """Lite 3×3: linear 1×1 conv, depthwise 3×3 conv, BN, ReLU (a factorised 3×3 conv)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 1, bias=False)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv2(self.conv1(x))))


class AggregationGate(nn.Module):
    """Unified aggregation gate: x · sigmoid(FC(ReLU(FC(avgpool(x))))), reduction 16."""

    def __init__(self, channels: int, reduction: int = GATE_REDUCTION):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.fc2(self.relu(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(weights)


class OSBlock(nn.Module):
    """Omni-scale residual bottleneck: 1×1 reduce, T streams, one shared gate, 1×1 expand."""

    def __init__(self, in_channels: int, out_channels: int, instance_norm: bool = False):
        super().__init__()
        mid = out_channels // BOTTLENECK_REDUCTION
        self.conv1 = ConvNormAct(in_channels, mid)
        # Stream t = t stacked lite convs; stream 1 is a bare module, as in the official layout.
        self.conv2a = LiteConv3x3(mid)
        self.conv2b = nn.Sequential(*(LiteConv3x3(mid) for _ in range(2)))
        self.conv2c = nn.Sequential(*(LiteConv3x3(mid) for _ in range(3)))
        self.conv2d = nn.Sequential(*(LiteConv3x3(mid) for _ in range(4)))
        self.gate = AggregationGate(mid)
        self.conv3 = ConvNormAct(mid, out_channels, relu=False)
        self.downsample = (
            ConvNormAct(in_channels, out_channels, relu=False)
            if in_channels != out_channels
            else nn.Identity()
        )
        # Attribute name `IN` keeps the official checkpoints' key names (`conv2.0.IN.weight`).
        self.IN = nn.InstanceNorm2d(out_channels, affine=True) if instance_norm else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def streams(self) -> tuple[nn.Module, ...]:
        return (self.conv2a, self.conv2b, self.conv2c, self.conv2d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.conv1(x)
        first, *rest = self.streams()
        fused = self.gate(first(reduced))
        for stream in rest:
            fused = fused + self.gate(stream(reduced))
        out = self.conv3(fused) + self.downsample(x)
        return self.relu(self.IN(out))


class OSNet(nn.Module):
    """OSNet feature-map extractor (stride 16); `out_channels` = channels of conv5."""

    def __init__(self, widths: tuple[int, int, int, int], ibn: bool = False):
        super().__init__()
        c0, c1, c2, c3 = widths
        self.conv1 = ConvNormAct(3, c0, 7, stride=2, instance_norm=ibn)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.conv2 = self._stage(c0, c1, transition=True, instance_norm=ibn)
        self.conv3 = self._stage(c1, c2, transition=True, instance_norm=False)
        self.conv4 = self._stage(c2, c3, transition=False, instance_norm=False)
        self.conv5 = ConvNormAct(c3, c3)
        self.out_channels = c3
        self._init_weights()

    @staticmethod
    def _stage(cin: int, cout: int, transition: bool, instance_norm: bool) -> nn.Sequential:
        layers: list[nn.Module] = [
            OSBlock(cin if i == 0 else cout, cout, instance_norm) for i in range(BLOCKS_PER_STAGE)
        ]
        if transition:
            layers.append(nn.Sequential(ConvNormAct(cout, cout), nn.AvgPool2d(2, stride=2)))
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d | nn.InstanceNorm2d) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        return self.conv5(self.conv4(self.conv3(self.conv2(x))))


def _build(name: str):
    def build(options: BackboneOptions) -> nn.Module:
        reject_options(name, options, {"ibn"})
        if options.ibn not in ("none", "a"):
            raise ValueError(f"backbone '{name}' supports ibn 'none' or 'a', got '{options.ibn}'")
        return OSNet(OSNET_WIDTHS[name], ibn=options.ibn == "a")

    return build


for _name in OSNET_WIDTHS:
    register_backbone(_name)(_build(_name))
