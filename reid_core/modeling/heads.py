"""The BNNeck head (Luo et al. 2019): triplet loss before the BN, classification after it."""

from __future__ import annotations

import torch
from torch import nn


class BNNeckHead(nn.Module):
    """Pooled feature → BatchNorm (no bias shift) → bias-free linear classifier.

    `forward` returns (feature before BN, feature after BN, logits or None when no classes).
    """

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.bottleneck = nn.BatchNorm1d(in_features)
        self.bottleneck.bias.requires_grad_(False)
        nn.init.ones_(self.bottleneck.weight)
        nn.init.zeros_(self.bottleneck.bias)
        self.classifier = nn.Linear(in_features, num_classes, bias=False) if num_classes else None
        if self.classifier is not None:
            nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(
        self, pooled: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        neck = self.bottleneck(pooled)
        logits = self.classifier(neck) if self.classifier is not None else None
        return pooled, neck, logits

    def reset_classifier(self, num_classes: int) -> None:
        """A new classifier, e.g. for pseudo labels in a new domain."""
        in_features = self.bottleneck.num_features
        device = self.bottleneck.weight.device
        self.classifier = nn.Linear(in_features, num_classes, bias=False, device=device)
        nn.init.normal_(self.classifier.weight, std=0.001)
