"""Batch sources: whole datasets in memory, batches drawn by shuffled index (no per-item Python work).

A source yields the batches of one epoch from a ``torch.Generator``; ``start=k`` skips the first k batches of
that same epoch, which is how an interrupted run resumes mid-epoch exactly.
"""
from __future__ import annotations

from typing import Iterator, Protocol

import torch

from genloom.data.images import ImageData


class BatchSource(Protocol):
    def __len__(self) -> int: ...  # batches per epoch
    def epoch(self, generator: torch.Generator, start: int = 0) -> Iterator: ...


class ImageBatches:
    """(x, y) batches: x float32 (B, 1, 28, 28) in [0, 1], y int64 (B,). ``shuffle=False`` for evaluation."""

    def __init__(self, data: ImageData, batch_size: int, *, shuffle: bool = True, drop_last: bool = False) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be ≥ 1")
        self.images = data.images
        self.labels = data.labels
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last

    def __len__(self) -> int:
        n = len(self.images)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def epoch(self, generator: torch.Generator | None = None, start: int = 0) -> Iterator:
        n = len(self.images)
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        for b in range(start, len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            x = self.images[idx].unsqueeze(1).float().div_(255.0)  # (B, 1, 28, 28)
            yield x, self.labels[idx]
