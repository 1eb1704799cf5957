"""Learning-rate schedules as a multiplier of the base LR, a function of training progress p ∈ [0, 1].

Stateless: the checkpointed step (or elapsed time, for a time-budget run) is all the state there is.
"""
from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine", "warmup-cosine")


def lr_factor(schedule: str, step: int, total: int | None, *, warmup: int = 0, min_ratio: float = 0.0,
              progress: float | None = None) -> float:
    """Multiplier for ``step`` of ``total``. ``progress`` (0..1) overrides step/total (time-budget runs)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if schedule == "constant":
        return 1.0
    if schedule == "warmup-cosine" and warmup > 0 and step < warmup:
        return (step + 1) / warmup  # linear warmup from lr/warmup to lr
    if progress is None:
        if not total:
            return 1.0
        span = max(1, total - (warmup if schedule == "warmup-cosine" else 0))
        done = step - (warmup if schedule == "warmup-cosine" else 0)
        progress = min(1.0, max(0.0, done / span))
    # cosine decay from 1 to min_ratio: min + (1 - min) · ½(1 + cos πp)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
