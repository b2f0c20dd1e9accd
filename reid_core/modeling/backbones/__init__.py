"""Backbones by name (see `registry`). Importing a backbone module registers its names."""

from __future__ import annotations

from dataclasses import fields

from torch import nn

from reid_core.modeling.backbones import (
    mobilenetv3,  # noqa: F401
    osnet,  # noqa: F401
    resnest,  # noqa: F401
    resnet,  # noqa: F401  (registers resnet*)
    vit,  # noqa: F401
)
from reid_core.modeling.backbones.pretrained import load_pretrained
from reid_core.modeling.backbones.registry import BACKBONES, BackboneOptions


def create_backbone(name: str, **options) -> nn.Module:
    """Build backbone `name`; `options` are `BackboneOptions` fields (last_stride, ibn, ...)."""
    known = {f.name for f in fields(BackboneOptions)}
    unknown = set(options) - known
    if unknown:
        raise TypeError(f"unknown backbone option(s): {', '.join(sorted(unknown))}")
    if isinstance(options.get("ibn"), bool):
        options["ibn"] = "a" if options["ibn"] else "none"
    return BACKBONES.lookup(name).build(BackboneOptions(**options))


__all__ = ["BACKBONES", "BackboneOptions", "create_backbone", "load_pretrained"]
