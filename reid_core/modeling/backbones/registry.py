"""The backbone registry: every backbone module registers its builders here by name.

A backbone maps normalised images (N×3×H×W) to a feature map (N×C×h×w) and states its
channel count as `out_channels`. `remap` (optional) turns a public checkpoint's state dict
into this module's key layout when loading pretrained weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
from torch import nn

from reid_core.registry import Registry

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class BackboneOptions:
    """Options shared by backbones; a backbone rejects those it cannot honour."""

    last_stride: int = 1
    ibn: str = "none"  # "none", "a" or "b"
    se: bool = False
    non_local: bool = False
    base_width: int = 64
    stem_pool: str = "padded"  # the ResNet stem's max pooling (resnet.STEM_POOLS)
    zero_init_residual: bool = False  # True: residual branches' last norms start at zero scale


@dataclass(frozen=True)
class BackboneEntry:
    build: Callable[[BackboneOptions], nn.Module]
    remap: Callable[[StateDict, nn.Module], StateDict] | None = None


BACKBONES: Registry[BackboneEntry] = Registry("backbone")


def register_backbone(
    name: str, remap: Callable[[StateDict, nn.Module], StateDict] | None = None
) -> Callable[[Callable[[BackboneOptions], nn.Module]], Callable[[BackboneOptions], nn.Module]]:
    """Decorator: register `build(options) -> nn.Module` as backbone `name`."""

    def decorate(build: Callable[[BackboneOptions], nn.Module]):
        BACKBONES.add(name, BackboneEntry(build, remap))
        return build

    return decorate


def reject_options(name: str, options: BackboneOptions, supported: set[str]) -> None:
    """Raise if `options` sets anything `name` does not support (no silent ignoring)."""
    default = BackboneOptions()
    unsupported = [
        field
        for field in (f.name for f in fields(BackboneOptions))
        if field not in supported and getattr(options, field) != getattr(default, field)
    ]
    if unsupported:
        raise ValueError(f"backbone '{name}' does not support option(s): {', '.join(unsupported)}")
