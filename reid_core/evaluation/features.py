"""Embeddings of an image set with a model in eval mode, batch by batch."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


@torch.inference_mode()
def extract_features(model: nn.Module, images: torch.Tensor, batch_size: int = 128) -> np.ndarray:
    """uint8 N×3×H×W → float32 N×D (not normalised; the distance decides), on the model's device."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    chunks = [
        model(images[i : i + batch_size].to(device).float()).cpu()
        for i in range(0, len(images), batch_size)
    ]
    model.train(was_training)
    if not chunks:
        raise ValueError("no images to extract features from")
    return torch.cat(chunks).float().numpy()
