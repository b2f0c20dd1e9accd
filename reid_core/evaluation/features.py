"""Embeddings of an image set with a model in eval mode, batch by batch."""

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
