"""Embeddings (and spatial feature maps) of an image set with a model in eval mode, in batches."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


@torch.inference_mode()
def extract_features(
    model: nn.Module, images: torch.Tensor, batch_size: int = 128, flip: bool = False
) -> np.ndarray:
    """uint8 N×3×H×W → float32 N×D, on the model's device.

    Not normalised (the distance normalises, once). With `flip`, the features of each image
    and of its mirror image are averaged (the flip test).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device

    def embed(batch: torch.Tensor) -> torch.Tensor:
        x = batch.to(device).float()
        return ((model(x) + model(x.flip(-1))) / 2 if flip else model(x)).cpu()

    chunks = [embed(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    model.train(was_training)
    if not chunks:
        raise ValueError("no images to extract features from")
    return torch.cat(chunks).float().numpy()


@torch.inference_mode()
def extract_features_and_maps(
    model: nn.Module, images: torch.Tensor, batch_size: int = 128, flip: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """As `extract_features`, plus each image's spatial feature maps (float32 N×C×h×w) from
    the same forward pass (`ReidModel.embed_with_maps`). With `flip`, the features average
    the mirror image's in; the maps are the unflipped image's (DSR does not align positions,
    so it gains nothing from the mirror)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    feats, maps = [], []
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].to(device).float()
        embedding, spatial = model.embed_with_maps(x)
        if flip:
            embedding = (embedding + model(x.flip(-1))) / 2
        feats.append(embedding.float().cpu())
        maps.append(spatial.float().cpu())
    model.train(was_training)
    if not feats:
        raise ValueError("no images to extract features from")
    return torch.cat(feats).numpy(), torch.cat(maps).numpy()
