"""Identity classifier layers: a plain linear layer and the margin-based cosine classifiers.

Every classifier maps embeddings N×D to logits N×C. Margin classifiers (ArcFace, CosFace,
circle softmax) compare L2-normalised embeddings with L2-normalised class weights, so their
logits are `s·cos θ`; given `labels` (training) they apply their margin to each sample's
target class. Without labels they return the plain `s·cos θ`, which is what a frozen
teacher's soft targets for distillation should be.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from reid_core.registry import Registry

CLASSIFIERS: Registry[type[Classifier]] = Registry("classifier")
"""Classifier name -> class; margin classes take (in, classes, scale, margin)."""


class Classifier(nn.Module):
    """Base: a `num_classes × in_features` weight (state-dict key `weight`) and the logits.

    Weights start as N(0, INIT_STD²) for every kind, as FastReID's heads start them.
    """

    INIT_STD = 0.01

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.in_features = in_features
        self.out_features = num_classes
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.normal_(self.weight, std=self.INIT_STD)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


@CLASSIFIERS.register("linear")
class LinearClassifier(Classifier):
    """Bias-free linear layer; labels are accepted and ignored (no margin)."""

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return F.linear(x, self.weight)


class MarginClassifier(Classifier):
    """Cosine classifier with scale `s`; subclasses define the target-class logit."""

    def __init__(self, in_features: int, num_classes: int, scale: float, margin: float):
        super().__init__(in_features, num_classes)
        self.scale = scale
        self.margin = margin

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale={self.scale}, margin={self.margin}"

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        # Margins act on cosines close to ±1, where half precision is too coarse.
        with torch.autocast(x.device.type, enabled=False):
            cos = F.linear(F.normalize(x.float(), dim=1), F.normalize(self.weight.float(), dim=1))
            if labels is None:
                return self.scale * cos
            target = F.one_hot(labels, self.out_features).bool()
            return self.margin_logits(cos, target)

    def margin_logits(self, cos: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Logits N×C from cosines N×C, `target` marking each row's true class."""
        raise NotImplementedError


@CLASSIFIERS.register("arcface")
class ArcFace(MarginClassifier):
    """Additive angular margin (Deng et al. 2019): `s·cos(θ + m)` on the target class.

    Past θ = π − m, cos(θ + m) would rise again; there the target logit falls back to
    `s·(cos θ − m·sin m)` (cos(θ + m) to first order at θ = π − m), which keeps it
    decreasing in θ, so a worse angle never earns a larger target logit.
    """

    def margin_logits(self, cos: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        m = self.margin
        sin = (1.0 - cos.pow(2)).clamp_min(1e-12).sqrt()
        cos_theta_m = cos * math.cos(m) - sin * math.sin(m)
        fallback = cos - m * math.sin(m)
        target_logit = torch.where(cos > math.cos(math.pi - m), cos_theta_m, fallback)
        return self.scale * torch.where(target, target_logit, cos)


@CLASSIFIERS.register("cosface")
class CosFace(MarginClassifier):
    """Large margin cosine (Wang et al. 2018): `s·(cos θ − m)` on the target class."""

    def margin_logits(self, cos: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.scale * torch.where(target, cos - self.margin, cos)


@CLASSIFIERS.register("circle")
class CircleSoftmax(MarginClassifier):
    """Circle loss in classification form (Sun et al. 2020).

    Target: `s·α_p·(cos − Δp)`, others: `s·α_n·(cos − Δn)`, with self-paced weights
    α_p = relu(1 + m − cos), α_n = relu(cos + m) treated as constants, Δp = 1 − m, Δn = m.
    """

    def margin_logits(self, cos: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        m = self.margin
        c = cos.detach()
        pos = F.relu(1.0 + m - c) * (cos - (1.0 - m))
        neg = F.relu(c + m) * (cos - m)
        return self.scale * torch.where(target, pos, neg)


def create_classifier(
    name: str, in_features: int, num_classes: int, scale: float = 64.0, margin: float = 0.35
) -> Classifier:
    """Build classifier `name` (of `CLASSIFIERS`); `scale`/`margin` are for margin kinds."""
    kind = CLASSIFIERS.lookup(name)
    if issubclass(kind, MarginClassifier):
        return kind(in_features, num_classes, scale, margin)
    return kind(in_features, num_classes)
