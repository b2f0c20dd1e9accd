"""The re-id model: normalisation, backbone, pooling and BNNeck head in one module."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from reid_core.config import ModelConfig
from reid_core.modeling.backbones import create_backbone
from reid_core.modeling.heads import BNNeckHead
from reid_core.modeling.pooling import create_pooling

# ImageNet statistics on the 0–255 scale: the model takes raw RGB pixel values, so every
# front end (PyTorch, ONNX, Triton) normalises exactly once, inside the network.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass
class ReidOutput:
    features: torch.Tensor  # pooled, before the neck (triplet loss)
    neck: torch.Tensor  # after the BNNeck
    logits: torch.Tensor | None


class ReidModel(nn.Module):
    """Images (N×3×H×W float, RGB 0–255) → embeddings in eval mode, `ReidOutput` in train mode."""

    def __init__(self, config: ModelConfig, num_classes: int):
        super().__init__()
        self.config = config
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), False)
        self.backbone = create_backbone(
            config.backbone,
            last_stride=config.last_stride,
            ibn=config.ibn,
            base_width=config.base_width,
        )
        self.pool = create_pooling(config.pooling, self.backbone.out_channels, config.gem_p)
        self.head = BNNeckHead(self.backbone.out_channels, num_classes)

    @property
    def embedding_dim(self) -> int:
        return self.backbone.out_channels

    def outputs(self, images: torch.Tensor) -> ReidOutput:
        """Every head output, whatever the mode (distillation needs a frozen teacher's logits)."""
        x = (images - self.pixel_mean) / self.pixel_std
        return ReidOutput(*self.head(self.pool(self.backbone(x))))

    def forward(self, images: torch.Tensor) -> torch.Tensor | ReidOutput:
        out = self.outputs(images)
        if self.training:
            return out
        return out.neck if self.config.neck_feat == "after" else out.features


def create_model(config: ModelConfig, num_classes: int = 0) -> ReidModel:
    """Build a model from its config (like timm's create_model: one entry point, by name)."""
    return ReidModel(config, num_classes)
