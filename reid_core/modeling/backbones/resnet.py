"""ResNet (He et al. 2016) with the re-id options: last stride 1 and IBN-a normalisation.

IBN-a (Pan et al. 2018) replaces half of the first BN of each block in layers 1–3 by instance
norm, which makes features less sensitive to colour and illumination shifts across cameras.
"""

from __future__ import annotations

import torch
from torch import nn

RESNET_DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}


class IBN(nn.Module):
    """Instance norm on the first half of the channels, batch norm on the rest."""

    def __init__(self, channels: int):
        super().__init__()
        self.half = channels // 2
        self.instance = nn.InstanceNorm2d(self.half, affine=True)
        self.batch = nn.BatchNorm2d(channels - self.half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.split(x, [self.half, x.shape[1] - self.half], dim=1)
        return torch.cat([self.instance(a.contiguous()), self.batch(b.contiguous())], dim=1)


def _norm(channels: int, ibn: bool) -> nn.Module:
    return IBN(channels) if ibn else nn.BatchNorm2d(channels)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int, ibn: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = _norm(planes, ibn)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(inplanes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, ibn: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = _norm(planes, ibn)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(inplanes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.downsample(x))


def _shortcut(inplanes: int, outplanes: int, stride: int) -> nn.Module:
    if stride == 1 and inplanes == outplanes:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(inplanes, outplanes, 1, stride, bias=False), nn.BatchNorm2d(outplanes)
    )


class ResNet(nn.Module):
    """Feature-map extractor; `out_channels` is the channel count of the last stage."""

    def __init__(
        self, depth: int = 50, last_stride: int = 1, ibn: bool = False, base_width: int = 64
    ):
        super().__init__()
        if depth not in RESNET_DEPTHS:
            raise ValueError(f"ResNet depth must be one of {sorted(RESNET_DEPTHS)}, got {depth}")
        kind, layers = RESNET_DEPTHS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        w = base_width
        self.conv1 = nn.Conv2d(3, w, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.inplanes = w
        strides = (1, 2, 2, last_stride)
        stages = []
        for i, (count, stride) in enumerate(zip(layers, strides, strict=True)):
            use_ibn = ibn and i < 3
            stages.append(self._stage(block, w * 2**i, count, stride, use_ibn))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_channels = self.inplanes
        self._init_weights()

    def _stage(self, block, planes: int, count: int, stride: int, ibn: bool) -> nn.Sequential:
        blocks = []
        for i in range(count):
            blocks.append(block(self.inplanes, planes, stride if i == 0 else 1, ibn))
            self.inplanes = planes * block.expansion
        return nn.Sequential(*blocks)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d | nn.InstanceNorm2d) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # Zero the last BN of each residual branch: blocks start as identities, training is
        # steadier from scratch (Goyal et al. 2017).
        for m in self.modules():
            last_bn = getattr(m, "bn3", None) if isinstance(m, Bottleneck) else None
            if isinstance(m, BasicBlock):
                last_bn = m.bn2
            if last_bn is not None:
                nn.init.zeros_(last_bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))
