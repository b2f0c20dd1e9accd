"""ResNet (He et al. 2016) and ResNeXt (Xie et al. 2017) with the re-id options.

Options: last stride 1 (a twice finer last feature map), IBN-a / IBN-b normalisation
(Pan et al. 2018), squeeze-excitation (Hu et al. 2018) and non-local blocks (Wang et al. 2018,
placed as in FastReID's AGW baseline). `base_width` scales every stage (64 = the ImageNet nets).

Key layout: torchvision/timm for the plain nets (`conv1`, `bn1`, `layerX.Y.convN`, `bnN`,
`downsample.0/1`), IBN-Net's for IBN (`bn1.IN`, `bn1.BN`; IBN-b: InstanceNorm stem `bn1`,
`layerX.Y.IN`), FastReID's for SE (`layerX.Y.se.fc.0/2`). Non-local blocks live under
`non_local.layerX.I`; `remap_resnet_checkpoint` renames FastReID's `NL_X.I` to that.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from reid_core.modeling.backbones.blocks import (
    IBN,
    NonLocal,
    SqueezeExcitation,
    init_residual_network,
)
from reid_core.modeling.backbones.registry import (
    BackboneOptions,
    StateDict,
    register_backbone,
    reject_options,
)

RESNET_DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}

# Non-local blocks per stage, each inserted after one of the stage's last blocks. AGW puts
# 2 in layer2 and 3 in layer3 of R50; R101 keeps the same (FastReID uses 9 in layer3 there).
# R18's stages have only 2 blocks, so it gets 1 in layer2 and 1 in layer3.
NON_LOCAL_COUNTS = {18: (0, 1, 1, 0), 34: (0, 2, 3, 0), 50: (0, 2, 3, 0), 101: (0, 2, 3, 0)}

IBN_MODES = ("none", "a", "b")
# the stem's 3×3 stride-2 max pooling: torchvision's (what ImageNet weights were trained with)
# or FastReID's; the output sizes agree for inputs whose sides are multiples of 4
STEM_POOLS = {
    "padded": lambda: nn.MaxPool2d(3, 2, padding=1),
    "ceil": lambda: nn.MaxPool2d(3, 2, ceil_mode=True),
}


def _norm(channels: int, ibn_a: bool) -> nn.Module:
    return IBN(channels) if ibn_a else nn.BatchNorm2d(channels)


def _shortcut(inplanes: int, outplanes: int, stride: int) -> nn.Module:
    if stride == 1 and inplanes == outplanes:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(inplanes, outplanes, 1, stride, bias=False), nn.BatchNorm2d(outplanes)
    )


class BasicBlock(nn.Module):
    """Two 3×3 convs (ResNet-18/34)."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        *,
        ibn_a: bool = False,
        ibn_b: bool = False,
        se: bool = False,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = _norm(planes, ibn_a)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.se = SqueezeExcitation(planes) if se else nn.Identity()
        self.IN = nn.InstanceNorm2d(planes, affine=True) if ibn_b else nn.Identity()
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(inplanes, planes, stride)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        return self.relu(self.IN(out + self.downsample(x)))


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (grouped for ResNeXt), 1×1 expand ×4 (ResNet-50/101, ResNeXt)."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        *,
        width: int | None = None,
        groups: int = 1,
        ibn_a: bool = False,
        ibn_b: bool = False,
        se: bool = False,
    ):
        super().__init__()
        width = width or planes
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = _norm(width, ibn_a)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.se = SqueezeExcitation(planes * 4) if se else nn.Identity()
        self.IN = nn.InstanceNorm2d(planes * 4, affine=True) if ibn_b else nn.Identity()
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(inplanes, planes * 4, stride)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.se(self.bn3(self.conv3(out)))
        return self.relu(self.IN(out + self.downsample(x)))


class ResNet(nn.Module):
    """Feature-map extractor; `out_channels` is the channel count of the last stage.

    `ibn`: "none", "a" (IBN in the first norm of every block of layers 1–3) or "b" (instance
    norm replacing the stem BN, and after the residual sum of the last block of layers 1–2);
    `True`/`False` mean "a"/"none". `groups`/`width_per_group` make it a ResNeXt: the 3×3
    conv of a stage with `planes` channels is `planes * width_per_group / 64 * groups` wide.
    """

    def __init__(
        self,
        depth: int = 50,
        last_stride: int = 1,
        ibn: str | bool = "none",
        base_width: int = 64,
        *,
        se: bool = False,
        non_local: bool = False,
        groups: int = 1,
        width_per_group: int = 64,
        non_local_counts: tuple[int, int, int, int] | None = None,
        stem_pool: str = "padded",
        zero_init_residual: bool = False,
    ):
        super().__init__()
        if depth not in RESNET_DEPTHS:
            raise ValueError(f"ResNet depth must be one of {sorted(RESNET_DEPTHS)}, got {depth}")
        if isinstance(ibn, bool):
            ibn = "a" if ibn else "none"
        if ibn not in IBN_MODES:
            raise ValueError(f"ibn must be one of {IBN_MODES}, got {ibn!r}")
        if last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, got {last_stride}")
        if stem_pool not in STEM_POOLS:
            raise ValueError(f"stem_pool must be one of {sorted(STEM_POOLS)}, got {stem_pool!r}")
        kind, layers = RESNET_DEPTHS[depth]
        if groups > 1 and kind == "basic":
            raise ValueError("grouped (ResNeXt) convolutions need bottleneck blocks (depth ≥ 50)")
        if (base_width * width_per_group) % 64 or base_width * width_per_group < 64:
            raise ValueError(
                f"base_width {base_width} with {width_per_group} channels per group gives a "
                f"fractional group width; use a multiple of {64 // width_per_group}"
            )
        w = base_width
        self.conv1 = nn.Conv2d(3, w, 7, 2, 3, bias=False)
        self.bn1 = nn.InstanceNorm2d(w, affine=True) if ibn == "b" else nn.BatchNorm2d(w)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = STEM_POOLS[stem_pool]()
        self.inplanes = w
        strides = (1, 2, 2, last_stride)
        stages = []
        for i, (count, stride) in enumerate(zip(layers, strides, strict=True)):
            planes = w * 2**i
            blocks = []
            for j in range(count):
                options = {
                    "ibn_a": ibn == "a" and i < 3,
                    "ibn_b": ibn == "b" and i < 2 and j == count - 1,
                    "se": se,
                }
                if kind == "bottleneck":
                    options |= {"width": planes * width_per_group // 64 * groups, "groups": groups}
                block_cls = BasicBlock if kind == "basic" else Bottleneck
                blocks.append(block_cls(self.inplanes, planes, stride if j == 0 else 1, **options))
                self.inplanes = planes * block_cls.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_channels = self.inplanes

        counts = (0, 0, 0, 0)
        if non_local:
            counts = non_local_counts or NON_LOCAL_COUNTS[depth]
        for stage, n in zip(stages, counts, strict=True):
            if n > len(stage):
                raise ValueError(f"{n} non-local blocks requested for a {len(stage)}-block stage")
        self.non_local_counts = tuple(counts)
        if any(counts):
            self.non_local = nn.ModuleDict(
                {
                    f"layer{i + 1}": nn.ModuleList(
                        NonLocal(stage[-1].last_bn.num_features) for _ in range(n)
                    )
                    for i, (stage, n) in enumerate(zip(stages, counts, strict=True))
                    if n
                }
            )
        blocks = [m for m in self.modules() if isinstance(m, BasicBlock | Bottleneck)]
        init_residual_network(self, [b.last_bn for b in blocks] if zero_init_residual else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i, stage in enumerate((self.layer1, self.layer2, self.layer3, self.layer4)):
            n = self.non_local_counts[i]
            if not n:
                x = stage(x)
                continue
            blocks = self.non_local[f"layer{i + 1}"]
            first = len(stage) - n
            for j, block in enumerate(stage):
                x = block(x)
                if j >= first:
                    x = blocks[j - first](x)
        return x


_FASTREID_NON_LOCAL = re.compile(r"^NL_(\d)\.(\d+)\.")


def remap_resnet_checkpoint(state_dict: StateDict, model: nn.Module) -> StateDict:
    """Rename FastReID's non-local keys (`NL_2.0.g.weight`) to ours (`non_local.layer2.0...`).

    Everything else in the torchvision, IBN-Net and FastReID layouts already matches.
    """
    del model  # the renaming does not depend on the model
    return {_FASTREID_NON_LOCAL.sub(r"non_local.layer\1.\2.", k): v for k, v in state_dict.items()}


RESNET_OPTIONS = {
    "last_stride", "ibn", "se", "non_local", "base_width", "stem_pool", "zero_init_residual"
}  # fmt: skip


def _register(name: str, depth: int, groups: int = 1, width_per_group: int = 64) -> None:
    def build(options: BackboneOptions) -> nn.Module:
        reject_options(name, options, RESNET_OPTIONS)
        return ResNet(
            depth,
            options.last_stride,
            options.ibn,
            options.base_width,
            se=options.se,
            non_local=options.non_local,
            groups=groups,
            width_per_group=width_per_group,
            stem_pool=options.stem_pool,
            zero_init_residual=options.zero_init_residual,
        )

    register_backbone(name, remap=remap_resnet_checkpoint)(build)


for _depth in RESNET_DEPTHS:
    _register(f"resnet{_depth}", _depth)
_register("resnext50_32x4d", 50, groups=32, width_per_group=4)
_register("resnext101_32x4d", 101, groups=32, width_per_group=4)
