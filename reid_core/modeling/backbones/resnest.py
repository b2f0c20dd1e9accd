"""ResNeSt (Zhang et al. 2020): ResNet-D with split-attention 3×3 convolutions.

A split-attention conv computes `radix` groups of feature maps and fuses them with a softmax
over the radix, driven by globally pooled features: channel attention across kernels. The net
also uses a deep 3×3 stem, average-pooling shortcuts ("avg down") and average-pooling
downsampling inside the strided blocks ("avd").

Module names follow the official checkpoints (zhanghang1989/ResNeSt, also timm's
`resnest50d` and FastReID's `backbone.`-prefixed copies): `conv1.0/1/3/4/6`, `bn1`,
`layerX.Y.conv2.conv/bn0/fc1/bn1/fc2`, `downsample.1/2`, so those load without renaming.
As in the official `resnest50` (`avd_first=False`), the avd pooling follows the
split-attention conv; the fast variants (`avd_first=True`) pool before it.
"""

from __future__ import annotations

import torch
from torch import nn

from reid_core.modeling.backbones.blocks import IBN, init_residual_network
from reid_core.modeling.backbones.registry import BackboneOptions, register_backbone, reject_options


class SplitAttentionConv(nn.Module):
    """3×3 conv with `radix` splits per cardinal group, fused by attention over the splits."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        stride: int = 1,
        radix: int = 2,
        cardinality: int = 1,
        reduction: int = 4,
        min_inter_channels: int = 32,
    ):
        super().__init__()
        inter = max(in_channels * radix // reduction, min_inter_channels)
        self.radix, self.cardinality, self.channels = radix, cardinality, channels
        self.conv = nn.Conv2d(
            in_channels, channels * radix, 3, stride, 1, groups=cardinality * radix, bias=False
        )
        self.bn0 = nn.BatchNorm2d(channels * radix)
        self.relu = nn.ReLU(inplace=True)
        self.fc1 = nn.Conv2d(channels, inter, 1, groups=cardinality)
        self.bn1 = nn.BatchNorm2d(inter)
        self.fc2 = nn.Conv2d(inter, channels * radix, 1, groups=cardinality)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn0(self.conv(x)))
        splits = x.unflatten(1, (self.radix, self.channels))  # N × radix × C × H × W
        pooled = splits.sum(dim=1).mean(dim=(2, 3), keepdim=True)
        logits = self.fc2(self.relu(self.bn1(self.fc1(pooled))))  # N × (radix·C) × 1 × 1
        if self.radix == 1:
            return x * torch.sigmoid(logits)
        # fc2's channels are ordered (cardinal group, radix, channel-in-group); the softmax runs
        # over the radix, then the weights are laid out radix-major like the conv's splits.
        weights = logits.reshape(logits.shape[0], self.cardinality, self.radix, -1).softmax(dim=2)
        weights = weights.transpose(1, 2).reshape(logits.shape[0], self.radix, self.channels, 1, 1)
        return (splits * weights).sum(dim=1)


class ResNeStBottleneck(nn.Module):
    """Bottleneck whose 3×3 conv is a split-attention conv; strided blocks downsample by avd."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        *,
        avd: bool = False,
        avd_first: bool = False,
        radix: int = 2,
        cardinality: int = 1,
        bottleneck_width: int = 64,
        ibn_a: bool = False,
    ):
        super().__init__()
        width = planes * bottleneck_width // 64 * cardinality
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = IBN(width) if ibn_a else nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.avd_first = avd_first
        self.avd_layer = nn.AvgPool2d(3, stride, padding=1) if avd else nn.Identity()
        self.conv2 = SplitAttentionConv(width, width, 1 if avd else stride, radix, cardinality)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or inplanes != planes * 4:
            # ResNet-D shortcut: average-pool first so the 1×1 conv sees every position.
            self.downsample = nn.Sequential(
                nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False),
                nn.Conv2d(inplanes, planes * 4, 1, bias=False),
                nn.BatchNorm2d(planes * 4),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        if self.avd_first:
            out = self.avd_layer(out)
        out = self.conv2(out)
        if not self.avd_first:
            out = self.avd_layer(out)
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.downsample(x))


class ResNeSt(nn.Module):
    """ResNeSt feature-map extractor; `out_channels` is the channel count of the last stage.

    `base_width` scales every stage (64 = ImageNet ResNeSt-50, stem width `base_width // 2`);
    `ibn="a"` puts IBN in the first norm of every block of layers 1–3, as for ResNet.
    """

    def __init__(
        self,
        layers: tuple[int, int, int, int] = (3, 4, 6, 3),
        last_stride: int = 1,
        ibn: str | bool = "none",
        base_width: int = 64,
        *,
        radix: int = 2,
        cardinality: int = 1,
        bottleneck_width: int = 64,
        stem_width: int | None = None,
        avd_first: bool = False,
        zero_init_residual: bool = False,
    ):
        super().__init__()
        if isinstance(ibn, bool):
            ibn = "a" if ibn else "none"
        if ibn not in ("none", "a"):
            raise ValueError(f"ResNeSt supports ibn 'none' or 'a', got {ibn!r}")
        if last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, got {last_stride}")
        stem = stem_width or base_width // 2
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, stem, 3, 2, 1, bias=False),
            nn.BatchNorm2d(stem),
            nn.ReLU(inplace=True),
            nn.Conv2d(stem, stem, 3, 1, 1, bias=False),
            nn.BatchNorm2d(stem),
            nn.ReLU(inplace=True),
            nn.Conv2d(stem, stem * 2, 3, 1, 1, bias=False),
        )
        self.bn1 = nn.BatchNorm2d(stem * 2)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = stem * 2
        stages = []
        for i, (count, stride) in enumerate(zip(layers, (1, 2, 2, last_stride), strict=True)):
            planes = base_width * 2**i
            blocks = []
            for j in range(count):
                blocks.append(
                    ResNeStBottleneck(
                        inplanes,
                        planes,
                        stride if j == 0 else 1,
                        # Official rule: the first block of layers 2–4 pools (stride 1 included,
                        # which only happens for layer4 with last_stride=1).
                        avd=j == 0 and i > 0,
                        avd_first=avd_first,
                        radix=radix,
                        cardinality=cardinality,
                        bottleneck_width=bottleneck_width,
                        ibn_a=ibn == "a" and i < 3,
                    )
                )
                inplanes = planes * 4
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_channels = inplanes
        blocks = [m for m in self.modules() if isinstance(m, ResNeStBottleneck)]
        init_residual_network(self, [b.bn3 for b in blocks] if zero_init_residual else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


@register_backbone("resnest50")
def build_resnest50(options: BackboneOptions) -> nn.Module:
    """ResNeSt-50 (radix 2, cardinality 1, stem width 32 at base width 64)."""
    reject_options("resnest50", options, {"last_stride", "ibn", "base_width", "zero_init_residual"})
    if options.ibn not in ("none", "a"):
        raise ValueError(f"backbone 'resnest50' supports ibn 'none' or 'a', got {options.ibn!r}")
    return ResNeSt(
        (3, 4, 6, 3),
        options.last_stride,
        options.ibn,
        options.base_width,
        zero_init_residual=options.zero_init_residual,
    )
