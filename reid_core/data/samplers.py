"""Identity samplers: batches of P identities × K images, as batch-hard triplet loss needs.

A sampler is stateless beyond (seed, epoch): an epoch is a seeded permutation of the identities
cut into batches of P, and each batch draws its images from its own random stream (the chunked
sampler draws a whole epoch from one stream). So resuming mid-epoch regenerates the epoch and
skips batches (`epoch(e, start=n)`, `batches(start)` across epochs), and under DDP every rank
computes the same global batch and keeps its own contiguous block of whole identities.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from reid_core.options import SolverConfig
from reid_core.registry import Registry

_UINT64 = (1 << 64) - 1  # SeedSequence takes non-negative entropy only


class IdentitySampler:
    """Base of the P×K samplers; subclasses choose one identity's K images (`_draw`).

    Each epoch visits every identity at most once (the remainder that does not fill a batch is
    left out; a new permutation each epoch). With `world_size` > 1, P is split over the ranks:
    rank r yields identities [r·P/W, (r+1)·P/W) of each global batch, so the ranks' batches
    concatenated in rank order equal the single-process batch of the same seed.
    """

    def __init__(
        self,
        labels: np.ndarray,
        ids_per_batch: int,
        images_per_id: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        labels = np.asarray(labels)
        if labels.ndim != 1:
            raise ValueError(f"labels must be one-dimensional, got shape {labels.shape}")
        if images_per_id < 1:
            raise ValueError(f"images_per_id must be at least 1, got {images_per_id}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of size {world_size}")
        if ids_per_batch % world_size:
            raise ValueError(
                f"ids_per_batch ({ids_per_batch}) must be divisible by the world size "
                f"({world_size}) so that every rank gets whole identities"
            )
        self.ids, inverse = np.unique(labels, return_inverse=True)
        if len(self.ids) < 2:
            raise ValueError("a P×K sampler needs at least two identities")
        p = min(ids_per_batch, len(self.ids))
        self.p = p - p % world_size  # global identities per batch
        if self.p == 0:
            raise ValueError(f"{len(self.ids)} identities cannot be split over {world_size} ranks")
        self.k = images_per_id
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        order = np.argsort(inverse, kind="stable")
        bounds = np.searchsorted(inverse[order], np.arange(len(self.ids)))
        self._members: list[np.ndarray] = np.split(order, bounds[1:])

    def __len__(self) -> int:
        """Batches per epoch; the same on every rank."""
        return len(self.ids) // self.p

    @property
    def batch_size(self) -> int:
        """Images in one of this rank's batches: (P / world_size) × K."""
        return self.p // self.world_size * self.k

    def epoch(self, epoch: int, start: int = 0) -> Iterator[np.ndarray]:
        """This rank's index batches of `epoch`, from batch `start` on (mid-epoch resume)."""
        if start < 0:
            raise ValueError(f"start must be non-negative, got {start}")
        entropy = (self.seed & _UINT64, epoch)
        id_order = np.random.default_rng(np.random.SeedSequence(entropy)).permutation(len(self.ids))
        lo, hi = self._rank_block()
        for batch in range(start, len(self)):
            # each batch has its own stream: skipping batches costs nothing, and identities after
            # this rank's block never influence it, so they need not be drawn
            rng = np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=(batch,)))
            ids = id_order[batch * self.p : batch * self.p + hi]
            draws = [self._draw(rng, int(i)) for i in ids]
            yield np.concatenate(draws[lo:])

    def _rank_block(self) -> tuple[int, int]:
        """[lo, hi): the positions of this rank's identities within a global batch."""
        local = self.p // self.world_size
        return self.rank * local, (self.rank + 1) * local

    def batches(self, start: int = 0) -> Iterator[np.ndarray]:
        """This rank's batches from global batch `start` on, epoch after epoch, without end."""
        epoch, offset = divmod(start, len(self))
        while True:
            yield from self.epoch(epoch, start=offset)
            epoch, offset = epoch + 1, 0

    def _draw(self, rng: np.random.Generator, identity: int) -> np.ndarray:
        """K dataset indices of identity number `identity` (an index into `self.ids`)."""
        raise NotImplementedError


class PKSampler(IdentitySampler):
    """K random images per identity, without replacement unless it has fewer than K."""

    def _draw(self, rng: np.random.Generator, identity: int) -> np.ndarray:
        members = self._members[identity]
        return rng.choice(members, self.k, replace=len(members) < self.k)


class ChunkedIdentitySampler(IdentitySampler):
    """FastReID's NaiveIdentitySampler: an epoch deals out each identity's images in chunks of K.

    At the start of an epoch every identity's images are shuffled (an identity with fewer than K
    draws K with replacement) and cut into chunks of K, the remainder left out. Each batch takes
    P identities at random among those with a chunk left, one chunk each; the epoch ends when
    fewer than P identities have one. So an identity with many images appears in several
    batches of an epoch, never with an image twice, and an epoch's length varies a little with
    the draw: `len()` is its upper bound, the number of chunks // P.
    """

    def __len__(self) -> int:
        chunks = sum(max(1, len(m) // self.k) for m in self._members)
        return chunks // self.p

    def _epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """The global batches of `epoch`, each P×K (identity by row)."""
        rng = np.random.default_rng(np.random.SeedSequence((self.seed & _UINT64, epoch)))
        chunks: dict[int, list[np.ndarray]] = {}
        available = list(range(len(self.ids)))
        out = []
        while len(available) >= self.p:
            chosen = rng.choice(available, self.p, replace=False)
            rows = []
            for identity in chosen.tolist():
                if identity not in chunks:
                    members = self._members[identity]
                    if len(members) < self.k:
                        members = rng.choice(members, self.k, replace=True)
                    members = rng.permutation(members)
                    n = len(members) // self.k
                    chunks[identity] = list(members[: n * self.k].reshape(n, self.k))[::-1]
                rows.append(chunks[identity].pop())
                if not chunks[identity]:
                    available.remove(identity)
            out.append(np.stack(rows))
        return out

    def _local(self, batch: np.ndarray) -> np.ndarray:
        lo, hi = self._rank_block()
        return batch[lo:hi].ravel()

    def epoch(self, epoch: int, start: int = 0) -> Iterator[np.ndarray]:
        if start < 0:
            raise ValueError(f"start must be non-negative, got {start}")
        for batch in self._epoch_batches(epoch)[start:]:
            yield self._local(batch)

    def batches(self, start: int = 0) -> Iterator[np.ndarray]:
        # epochs differ in length: walk them to the one holding batch `start`
        epoch = 0
        while True:
            epoch_batches = self._epoch_batches(epoch)
            for batch in epoch_batches[start:]:
                yield self._local(batch)
            start = max(0, start - len(epoch_batches))
            epoch += 1


class CameraBalancedSampler(IdentitySampler):
    """K images per identity spread over its cameras as evenly as possible.

    Slot j of an identity's K takes camera j mod C in a seeded random order of its C cameras;
    within a camera, images are drawn without replacement until it is exhausted, then again.
    A batch thus holds cross-camera positives for every identity seen by more than one camera,
    covering min(K, C) distinct cameras.
    """

    def __init__(
        self,
        labels: np.ndarray,
        camids: np.ndarray,
        ids_per_batch: int,
        images_per_id: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        super().__init__(labels, ids_per_batch, images_per_id, seed, rank, world_size)
        camids = np.asarray(camids)
        if camids.shape != np.shape(labels):
            raise ValueError(f"{len(camids)} camera ids but {len(labels)} labels")
        self._cameras: list[list[np.ndarray]] = []
        for members in self._members:
            members = members[np.argsort(camids[members], kind="stable")]
            _, starts = np.unique(camids[members], return_index=True)
            self._cameras.append(np.split(members, starts[1:]))

    def _draw(self, rng: np.random.Generator, identity: int) -> np.ndarray:
        cameras = self._cameras[identity]
        n_cams = len(cameras)
        cam_order = rng.permutation(n_cams)
        out = np.empty(self.k, dtype=np.int64)
        for j in range(min(self.k, n_cams)):
            members = cameras[cam_order[j]]
            need = len(range(j, self.k, n_cams))
            rounds = -(-need // len(members))
            # `rounds` independent permutations back to back: no repeats before exhaustion
            picks = np.argsort(rng.random((rounds, len(members))), axis=1).ravel()[:need]
            out[j::n_cams] = members[picks]
        return out


SAMPLERS: Registry[Callable[..., IdentitySampler]] = Registry("sampler")
"""Sampler name -> builder(labels, camids, p, k, seed, rank, world_size)."""


@SAMPLERS.register("pk")
def _pk(labels, camids, p, k, seed, rank, world_size) -> IdentitySampler:
    return PKSampler(labels, p, k, seed, rank, world_size)


@SAMPLERS.register("camera_balanced")
def _camera_balanced(labels, camids, p, k, seed, rank, world_size) -> IdentitySampler:
    if camids is None:
        raise ValueError("the camera_balanced sampler needs camera ids")
    return CameraBalancedSampler(labels, camids, p, k, seed, rank, world_size)


@SAMPLERS.register("chunked")
def _chunked(labels, camids, p, k, seed, rank, world_size) -> IdentitySampler:
    return ChunkedIdentitySampler(labels, p, k, seed, rank, world_size)


def create_sampler(
    config: SolverConfig,
    labels: np.ndarray,
    camids: np.ndarray | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> IdentitySampler:
    """The sampler `config.sampler` names, seeded with `config.seed`."""
    build = SAMPLERS.lookup(config.sampler)
    p, k = config.ids_per_batch, config.images_per_id
    return build(labels, camids, p, k, config.seed, rank, world_size)
