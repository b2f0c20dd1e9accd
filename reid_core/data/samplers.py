"""Identity samplers: batches of P identities × K images, as batch-hard triplet loss needs."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


class PKSampler:
    """Yields index batches of `ids_per_batch` identities with `images_per_id` images each.

    An epoch visits every identity once in random order; identities with fewer than K images
    are sampled with replacement. Deterministic for a given seed and epoch.
    """

    def __init__(self, labels: np.ndarray, ids_per_batch: int, images_per_id: int, seed: int = 0):
        labels = np.asarray(labels)
        self.ids = np.unique(labels)
        if len(self.ids) < 2:
            raise ValueError("a P×K sampler needs at least two identities")
        self.p = min(ids_per_batch, len(self.ids))
        self.k = images_per_id
        self.seed = seed
        order = np.argsort(labels, kind="stable")
        bounds = np.searchsorted(labels[order], self.ids)
        self._members = np.split(order, bounds[1:])

    def __len__(self) -> int:
        return len(self.ids) // self.p

    def epoch(self, epoch: int) -> Iterator[np.ndarray]:
        rng = np.random.default_rng((self.seed, epoch))
        id_order = rng.permutation(len(self.ids))
        for start in range(0, len(self) * self.p, self.p):
            batch = []
            for i in id_order[start : start + self.p]:
                members = self._members[i]
                batch.append(rng.choice(members, self.k, replace=len(members) < self.k))
            yield np.concatenate(batch)
