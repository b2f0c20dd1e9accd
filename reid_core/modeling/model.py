"""The re-id model: normalisation, backbone, pooling and head (neck + classifier) in one module."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from reid_core.modeling.backbones import create_backbone
from reid_core.modeling.heads import create_head
from reid_core.modeling.pooling import create_pooling
from reid_core.options import ModelConfig

log = logging.getLogger(__name__)

# ImageNet statistics on the 0–255 scale: the model takes raw RGB pixel values, so every
# front end (PyTorch, ONNX, Triton) normalises exactly once, inside the network.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass
class ReidOutput:
    features: torch.Tensor  # for metric losses: before the neck (pooled or reduced) or after it
    neck: torch.Tensor  # the embedding after the neck
    logits: torch.Tensor | None  # None without classes


class ReidModel(nn.Module):
    """Images (N×3×H×W float, RGB 0–255) → embeddings in eval mode, `ReidOutput` in train mode."""

    def __init__(self, config: ModelConfig, num_classes: int):
        super().__init__()
        self.config = config
        self.pretrained_report = None  # what create_model loaded from config.pretrained
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), False)
        self.backbone = create_backbone(
            config.backbone,
            last_stride=config.last_stride,
            ibn=config.ibn,
            base_width=config.base_width,
            se=config.se,
            non_local=config.non_local,
            stem_pool=config.stem_pool,
            zero_init_residual=config.zero_init_residual,
        )
        self.pool = create_pooling(config.pooling, self.backbone.out_channels, config.gem_p)
        self.head = create_head(config, self.backbone.out_channels, num_classes)

    @property
    def embedding_dim(self) -> int:
        """Size of the eval-mode embedding."""
        return self.head.out_features

    @property
    def num_classes(self) -> int:
        """Number of classifier outputs (0: no classifier)."""
        return self.head.num_classes

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier by a fresh one of the configured kind (e.g. pseudo labels)."""
        self.head.reset_classifier(num_classes, device=self.pixel_mean.device)

    def _maps(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone((images - self.pixel_mean) / self.pixel_std)

    def _pooled(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool(self._maps(images))

    def outputs(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> ReidOutput:
        """Every head output, whatever the mode (distillation needs a frozen teacher's logits).

        With `labels`, margin classifiers apply their margin to the target class.
        """
        return ReidOutput(*self.head(self._pooled(images), labels))

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor | ReidOutput:
        """Training: `ReidOutput` (margins applied when `labels` are given); eval: embeddings."""
        if self.training:
            return self.outputs(images, labels)
        return self._embed(self._pooled(images))

    def _embed(self, pooled: torch.Tensor) -> torch.Tensor:
        features, neck = self.head.embed(pooled)
        return neck if self.config.neck_feat == "after" else features

    def embed_with_maps(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(eval-mode embeddings N×D, the backbone's spatial feature maps N×C×h×w) from one
        forward pass: the maps are what the embedding was pooled from (for DSR)."""
        maps = self._maps(images)
        return self._embed(self.pool(maps)), maps


def create_model(
    config: ModelConfig, num_classes: int = 0, *, pretrained: bool = True
) -> ReidModel:
    """Build a model from its config (like timm's create_model: one entry point, by name).

    The backbone starts from `config.pretrained` when it names weights, for every caller; what
    was loaded is kept as `model.pretrained_report`. `pretrained=False` skips them, for a model
    whose weights come next from elsewhere (a checkpoint).
    """
    model = ReidModel(config, num_classes)
    if pretrained and config.pretrained:
        model.pretrained_report = load_pretrained_backbone(model, config.pretrained)
        log.info("pretrained backbone: %s", model.pretrained_report)
    return model


def load_pretrained_backbone(model: ReidModel, source: str):
    """Load ImageNet (or other public) weights into `model.backbone` from a file or URL,
    mapping the checkpoint's key layout to ours; returns what was loaded and what was not."""
    from reid_core.modeling.backbones.pretrained import load_backbone_weights

    return load_backbone_weights(model.config.backbone, model.backbone, source)
