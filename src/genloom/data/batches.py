"""Batch sources: whole datasets in memory, batches drawn by shuffled index (no per-item Python work).

A source yields the batches of one epoch from a ``torch.Generator``; ``start=k`` skips the first k batches of
that same epoch, which is how an interrupted run resumes mid-epoch exactly.

Data parallelism: ``sharded(rank, world)`` gives the same source for one rank of ``world``. Every rank draws the
same global batch of indices and keeps its rows [lo, hi) (``shard_rows``; the GAN's batch of ``groups`` critic
minibatches is split per minibatch), and records them in ``current`` for the Trainer. ``to(device)`` moves the
whole dataset onto the device once (a whole image split fits on any GPU as uint8); batches are gathered there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol

import torch

from genloom.data.images import ImageData


class BatchSource(Protocol):
    def __len__(self) -> int: ...  # batches per epoch
    def epoch(self, generator: torch.Generator, start: int = 0) -> Iterator: ...


@dataclass(frozen=True)
class RowShard:
    """Under data parallelism: this process holds rows [lo, hi) of a global batch of n rows (per critic
    minibatch for the GAN). The Trainer sets it on the model for the step; None in a single process."""

    lo: int
    hi: int
    n: int


def shard_rows(n: int, rank: int, world: int) -> RowShard:
    """Rank's [lo, hi) of n rows: contiguous chunks whose sizes differ by at most one (as torch.tensor_split)."""
    q, r = divmod(n, world)
    lo = rank * q + min(rank, r)
    return RowShard(lo, lo + q + (1 if rank < r else 0), n)


class Sharding:
    """Mixin: rank/world, the row shard of the batch last yielded, the device the data lives on."""

    rank: int = 0
    world: int = 1
    groups: int = 1
    current: RowShard | None = None
    device: torch.device = torch.device("cpu")

    skip_small: bool = True  # training: a global batch with fewer rows than ranks is skipped by every rank

    def sharded(self, rank: int, world: int, *, groups: int = 1, skip_small: bool = True):
        """A shallow copy of this source for one rank (the data tensors are shared, not copied).
        ``skip_small=False`` (validation): a batch smaller than the world size leaves some ranks an empty batch."""
        import copy

        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside world size {world}")
        s = copy.copy(self)
        s.rank, s.world, s.groups, s.current, s.skip_small = rank, world, groups, None, skip_small
        return s

    def _small(self, rows: int) -> bool:
        return self.world > 1 and self.skip_small and rows // self.groups < self.world

    def _take(self, idx: torch.Tensor) -> torch.Tensor | None:
        """This rank's part of one global batch of indices (None: the batch is skipped by every rank alike)."""
        if self.world == 1:
            return idx
        per = len(idx) // self.groups
        if self._small(len(idx)):
            return None
        sh = shard_rows(per, self.rank, self.world)
        self.current = sh
        return idx[:per * self.groups].view(self.groups, per)[:, sh.lo:sh.hi].reshape(-1)  # (groups · rows,)


class ImageBatches(Sharding):
    """(x, y) batches: x float32 (B, 1, 28, 28) in [0, 1], y int64 (B,). ``shuffle=False`` for evaluation."""

    def __init__(self, data: ImageData, batch_size: int, *, shuffle: bool = True, drop_last: bool = False) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be ≥ 1")
        self.images = data.images
        self.labels = data.labels
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last

    def to(self, device: torch.device | str) -> "ImageBatches":
        self.device = torch.device(device)
        self.images, self.labels = self.images.to(self.device), self.labels.to(self.device)
        return self

    def __len__(self) -> int:
        n = len(self.images)
        full, rest = divmod(n, self.batch_size)
        if self.drop_last or rest == 0:
            return full
        return full + (0 if self._small(rest) else 1)

    def epoch(self, generator: torch.Generator | None = None, start: int = 0) -> Iterator:
        n = len(self.images)
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        for b in range(start, len(self)):
            idx = self._take(order[b * self.batch_size:(b + 1) * self.batch_size])
            if idx is None:
                continue
            idx = idx.to(self.device, non_blocking=True)
            x = self.images[idx].unsqueeze(1).float().div_(255.0)  # (B, 1, 28, 28)
            yield x, self.labels[idx]
