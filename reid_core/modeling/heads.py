"""Heads: pooled backbone features → (metric-loss features, neck embedding, logits).

`features` feed the metric losses (triplet, circle, cosface): the feature before the neck, or
with `metric_feat: after` the neck's output; `neck` is the embedding after the neck and
`logits` come from the configured classifier on the neck (None without classes).
Every head states its embedding size as `out_features`.
"""

from __future__ import annotations

import torch
from torch import nn

from reid_core.modeling.classifiers import Classifier, create_classifier
from reid_core.options import ModelConfig
from reid_core.registry import Registry

HEADS: Registry[type[Head]] = Registry("head")
"""Head name -> class taking (pooled channels, classes, model options)."""
HeadOutput = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


def _bn_neck(features: int) -> nn.BatchNorm1d:
    """BatchNorm with its bias frozen at zero (no shift), as in BNNeck."""
    bn = nn.BatchNorm1d(features)
    bn.bias.requires_grad_(False)
    return bn


class Head(nn.Module):
    """Base head: subclasses define `embed`; the classifier runs on the neck embedding."""

    def __init__(self, out_features: int, num_classes: int, config: ModelConfig):
        super().__init__()
        self.out_features = out_features
        self.metric_after_neck = config.metric_feat == "after"
        self._classifier_kind = (
            config.classifier,
            config.classifier_scale,
            config.classifier_margin,
        )
        self.classifier: Classifier | None = self._new_classifier(num_classes)

    def _new_classifier(self, num_classes: int) -> Classifier | None:
        if num_classes <= 0:
            return None
        name, scale, margin = self._classifier_kind
        return create_classifier(name, self.out_features, num_classes, scale, margin)

    @property
    def num_classes(self) -> int:
        return self.classifier.out_features if self.classifier is not None else 0

    def embed(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features for metric losses, neck embedding); no classifier (eval/export path)."""
        raise NotImplementedError

    def forward(self, pooled: torch.Tensor, labels: torch.Tensor | None = None) -> HeadOutput:
        features, neck = self.embed(pooled)
        logits = self.classifier(neck, labels) if self.classifier is not None else None
        return (neck if self.metric_after_neck else features), neck, logits

    def reset_classifier(self, num_classes: int, device: torch.device | None = None) -> None:
        """A fresh classifier of the configured kind (e.g. for pseudo labels in a new domain).

        It lands on `device`, else where the head's tensors are.
        """
        if device is None:
            tensors = [*self.parameters(), *self.buffers()]
            device = tensors[0].device if tensors else torch.device("cpu")
        classifier = self._new_classifier(num_classes)
        self.classifier = classifier.to(device) if classifier is not None else None


@HEADS.register("linear")
class LinearHead(Head):
    """No neck: the classifier sees the pooled feature, which is also the embedding."""

    def __init__(self, in_channels: int, num_classes: int, config: ModelConfig):
        super().__init__(in_channels, num_classes, config)

    def embed(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return pooled, pooled


@HEADS.register("bnneck")
class BNNeckHead(Head):
    """BNNeck (Luo et al. 2019): metric losses before the BN, classification after it.

    Separating the two lets triplet loss shape a free Euclidean space while the classifier
    gets a normalised, near-spherical one.
    """

    def __init__(self, in_channels: int, num_classes: int, config: ModelConfig):
        super().__init__(in_channels, num_classes, config)
        self.bottleneck = _bn_neck(in_channels)

    def embed(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return pooled, self.bottleneck(pooled)


@HEADS.register("reduction")
class ReductionHead(Head):
    """Linear reduction (a 1×1 conv on the pooled map) + BN + LeakyReLU + dropout, then BNNeck.

    Gives a smaller embedding (`embedding_dim`, 0 keeps the input size); metric losses see
    the reduced feature, the classifier its BN-neck output.
    """

    def __init__(self, in_channels: int, num_classes: int, config: ModelConfig):
        dim = config.embedding_dim or in_channels
        super().__init__(dim, num_classes, config)
        linear = nn.Linear(in_channels, dim, bias=False)
        nn.init.kaiming_normal_(linear.weight, a=0.1, nonlinearity="leaky_relu")
        self.reduction = nn.Sequential(
            linear, nn.BatchNorm1d(dim), nn.LeakyReLU(0.1), nn.Dropout(config.dropout)
        )
        self.bottleneck = _bn_neck(dim)

    def embed(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        reduced = self.reduction(pooled)
        return reduced, self.bottleneck(reduced)


def create_head(config: ModelConfig, in_channels: int, num_classes: int) -> Head:
    """Build the configured head on `in_channels` pooled features with `num_classes` ids."""
    if config.head != "reduction" and (config.embedding_dim or config.dropout):
        raise ValueError(
            f"embedding_dim and dropout need head 'reduction' (head is '{config.head}')"
        )
    return HEADS.lookup(config.head)(in_channels, num_classes, config)
