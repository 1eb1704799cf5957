"""``TrainConfig``: every setting of a training run, frozen and validated (the CLI resolves flags, presets and
family defaults into one; ``recipes/common.train_config``)."""
from __future__ import annotations

from dataclasses import dataclass

from genloom.errors import ConfigError
from genloom.training import precision as prec
from genloom.training.schedules import SCHEDULES


@dataclass(frozen=True)
class TrainConfig:
    out: str
    epochs: int | None = None
    steps: int | None = None
    time_budget: float | None = None  # seconds; stop cleanly once spent
    batch_size: int = 128
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    schedule: str = "constant"  # constant | cosine | warmup-cosine
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    decay_frac: float = 0.25  # wsd: the final fraction of training over which the LR decays
    grad_clip: float | None = None  # global-norm clipping
    val_every: int | None = None  # steps; None = at the end of every epoch
    val_batches: int | None = None  # cap on validation batches (None = the whole validation set)
    patience: int | None = None  # early stopping: validations without improvement ≥ min_delta
    min_delta: float = 0.0
    checkpoint_every: int = 1  # epochs (also: at every validation when val_every is set)
    checkpoint_steps: int | None = None  # also every N steps: last.pt and a kept copy step-NNNNNNNN.pt
    keep_checkpoints: int = 3  # step-*.pt copies kept (the oldest are deleted)
    tensorboard: bool = True  # TensorBoard event files beside metrics.jsonl (training/tensorboard.py)
    log_every: int = 10
    seed: int = 0
    progress: bool = True
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps (genloom/device.py)
    precision: str = "fp32"  # auto | fp32 | bf16 | fp16 (train/precision.py; the CLI's default is auto)
    compile: bool = False  # torch.compile the model's loss

    def __post_init__(self) -> None:
        if self.epochs is None and self.steps is None and self.time_budget is None:
            raise ConfigError("give --epochs, --steps or --time-budget")
        if self.precision not in prec.CHOICES:
            raise ConfigError(f"precision must be one of {', '.join(prec.CHOICES)}, not {self.precision!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        for name in ("epochs", "steps", "batch_size", "log_every", "checkpoint_every", "checkpoint_steps",
                     "keep_checkpoints"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"{name} must be ≥ 1, got {v}")
        if self.time_budget is not None and self.time_budget <= 0:
            raise ConfigError("time_budget must be > 0 seconds")
