"""Embeddings (and spatial feature maps) of an image set with a model in eval mode, in batches."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn


def _in_batches(
    model: nn.Module,
    images: torch.Tensor,
    batch_size: int,
    step: Callable[[torch.Tensor], tuple[torch.Tensor, ...]],
) -> list[torch.Tensor]:
    """`step` on each float batch on the model's device, in eval mode (restored after): each
    of its outputs concatenated over the batches, on the CPU."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    outputs = [
        [out.float().cpu() for out in step(images[i : i + batch_size].to(device).float())]
        for i in range(0, len(images), batch_size)
    ]
    model.train(was_training)
    if not outputs:
        raise ValueError("no images to extract features from")
    return [torch.cat(column) for column in zip(*outputs, strict=True)]


@torch.inference_mode()
def extract_features(
    model: nn.Module, images: torch.Tensor, batch_size: int = 128, flip: bool = False
) -> np.ndarray:
    """uint8 N×3×H×W → float32 N×D, on the model's device.

    Not normalised (the distance normalises, once). With `flip`, the features of each image
    and of its mirror image are averaged (the flip test).
    """

    def embed(x: torch.Tensor) -> tuple[torch.Tensor]:
        return ((model(x) + model(x.flip(-1))) / 2 if flip else model(x),)

    (feats,) = _in_batches(model, images, batch_size, embed)
    return feats.numpy()


@torch.inference_mode()
def extract_features_and_maps(
    model: nn.Module, images: torch.Tensor, batch_size: int = 128, flip: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """As `extract_features`, plus each image's spatial feature maps (float32 N×C×h×w) from
    the same forward pass (`ReidModel.embed_with_maps`). With `flip`, the features average
    the mirror image's in; the maps are the unflipped image's (DSR does not align positions,
    so it gains nothing from the mirror)."""

    def embed(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding, maps = model.embed_with_maps(x)
        return ((embedding + model(x.flip(-1))) / 2 if flip else embedding), maps

    feats, maps = _in_batches(model, images, batch_size, embed)
    return feats.numpy(), maps.numpy()
