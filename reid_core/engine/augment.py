"""Training augmentation applied to whole batches on the training device (kornia)."""

from __future__ import annotations

import torch
from torch import nn

from reid_core.config import AugmentConfig


class BatchAugment(nn.Module):
    """uint8 N×3×H×W → float 0–255: flip, pad + random crop, random erasing."""

    def __init__(self, config: AugmentConfig, height: int, width: int):
        super().__init__()
        import kornia.augmentation as K

        steps: list[nn.Module] = []
        if config.flip_p > 0:
            steps.append(K.RandomHorizontalFlip(p=config.flip_p))
        if config.pad > 0:
            steps.append(K.RandomCrop((height, width), padding=config.pad, fill=0.0))
        if config.erasing_p > 0:
            # Fill erased boxes with the mean pixel, i.e. zero after normalisation.
            steps.append(K.RandomErasing(p=config.erasing_p, value=0.45))
        self.steps = nn.Sequential(*steps)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.steps(images.float() / 255.0) * 255.0
