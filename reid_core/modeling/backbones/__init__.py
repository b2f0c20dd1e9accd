"""Backbones by name. Each maps an image batch to a feature map and states its channels."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from reid_core.modeling.backbones.resnet import RESNET_DEPTHS, ResNet

BACKBONES: dict[str, Callable[..., nn.Module]] = {
    f"resnet{depth}": (lambda depth=depth, **kw: ResNet(depth=depth, **kw))
    for depth in RESNET_DEPTHS
}


def create_backbone(name: str, **kwargs) -> nn.Module:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone '{name}'; known: {', '.join(sorted(BACKBONES))}")
    return BACKBONES[name](**kwargs)
