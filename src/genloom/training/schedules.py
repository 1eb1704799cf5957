"""Learning-rate schedules as a multiplier of the base LR, a function of training progress p ∈ [0, 1].

Stateless: the checkpointed step (or elapsed time, for a time-budget run) is all the state there is.
"""
from __future__ import annotations

import math

from genloom.errors import ConfigError

SCHEDULES = ("constant", "cosine", "warmup-cosine", "wsd")


def lr_factor(schedule: str, step: int, total: int | None, *, warmup: int = 0, min_ratio: float = 0.0,
              progress: float | None = None, decay_frac: float = 0.25) -> float:
    """Multiplier for ``step`` of ``total``. ``progress`` (0..1) overrides step/total (time-budget runs).

    ``wsd`` (warmup-stable-decay): linear warmup, the peak LR held, then a linear decay to ``min_ratio`` over the
    last ``decay_frac`` of training — keeps the fast progress of a constant LR and still anneals at the end."""
    if schedule not in SCHEDULES:
        raise ConfigError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if schedule == "constant":
        return 1.0
    if schedule in ("warmup-cosine", "wsd") and warmup > 0 and step < warmup:
        return (step + 1) / warmup  # linear warmup from lr/warmup to lr
    if schedule == "wsd":
        if progress is None:
            progress = step / total if total else 0.0
        start = 1.0 - decay_frac
        if progress <= start:
            return 1.0
        return 1.0 - (1.0 - min_ratio) * min(1.0, (progress - start) / max(decay_frac, 1e-9))
    if progress is None:
        if not total:
            return 1.0
        span = max(1, total - (warmup if schedule == "warmup-cosine" else 0))
        done = step - (warmup if schedule == "warmup-cosine" else 0)
        progress = min(1.0, max(0.0, done / span))
    # cosine decay from 1 to min_ratio: min + (1 - min) · ½(1 + cos πp)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
