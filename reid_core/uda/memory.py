"""Cluster-memory contrastive loss for training on pseudo labels (Cluster Contrast, SpCL).

Each pseudo identity is one unit vector in a memory, initialised with its cluster's mean
feature; a sample is classified against the whole memory by cosine similarity / temperature,
and the memory entry of its cluster then moves towards it. Unlike a fresh linear classifier,
the memory starts out right (at the centroids), so the first steps do not wreck the features.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reid_core.modeling.losses import ReidLoss
from reid_core.modeling.model import ReidOutput


def cluster_centroids(features: np.ndarray, labels: np.ndarray) -> torch.Tensor:
    """Unit-length mean of the unit-length features of each label 0..C-1 (C×D float32)."""
    feats = F.normalize(torch.as_tensor(features, dtype=torch.float32), dim=1)
    index = torch.as_tensor(labels, dtype=torch.long)
    num = int(index.max()) + 1
    sums = torch.zeros(num, feats.shape[1]).index_add_(0, index, feats)
    return F.normalize(sums, dim=1)


class ClusterMemoryLoss(nn.Module):
    """InfoNCE of each sample's embedding against the cluster memory, plus optional re-id terms.

    `momentum` is the weight of a memory entry's old value when a sample of its cluster
    updates it (Cluster Contrast's convention: 0.1–0.2 keeps mostly the new sample). Updates
    run sample by sample in batch order, renormalising each time. The memory is a buffer,
    so a resumed run continues with it. `neck` says which embedding to use: the neck's (as
    served when `neck_feat` is "after") or the pooled features.
    """

    def __init__(
        self,
        centroids: torch.Tensor,
        temperature: float,
        momentum: float,
        neck: bool = True,
        extra: ReidLoss | None = None,
    ):
        super().__init__()
        if not 0 <= momentum < 1:
            raise ValueError(f"memory momentum must lie in [0, 1), got {momentum}")
        self.register_buffer("memory", F.normalize(centroids.float(), dim=1))
        self.temperature = temperature
        self.momentum = momentum
        self.neck = neck
        self.extra = extra

    def forward(
        self, out: ReidOutput, labels: torch.Tensor, images: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        embedding = F.normalize(out.neck if self.neck else out.features, dim=1)
        # a copy: the update below changes the memory before the backward pass needs it
        logits = embedding @ self.memory.clone().T / self.temperature
        terms = {"loss_memory": F.cross_entropy(logits, labels)}
        if self.extra is not None:
            terms.update(self.extra(out, labels))
        self.update(embedding.detach(), labels)
        return terms

    @torch.no_grad()
    def update(self, embedding: torch.Tensor, labels: torch.Tensor) -> None:
        if self.training:
            for x, y in zip(embedding, labels.tolist(), strict=True):
                entry = self.momentum * self.memory[y] + (1 - self.momentum) * x
                self.memory[y] = entry / entry.norm().clamp_min(1e-12)
