"""The protocol every model family implements, so one Trainer drives them all.

A model is an ``nn.Module`` with:
- ``config``: a frozen dataclass that JSON round-trips into the export metadata;
- ``loss(batch) -> LossOutput``: the training objective on one batch (mean over the batch), plus metrics;
- ``generate(n, *, generator=None, **kw)``: samples;
- ``configure_optimizers(tcfg) -> dict[str, Optimizer]``: one entry for most models, two for a GAN;
- ``train_step(batch, optimizers, step, trainer) -> LossOutput``: one training step. The default is one
  backward + clip + step of the single optimizer; a GAN overrides it with its n_critic schedule.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from genloom.data.batches import RowShard


@dataclass
class LossOutput:
    loss: torch.Tensor
    metrics: dict[str, Any] = field(default_factory=dict)  # floats or 0-d tensors (read at log time)
    n: int = 1  # number of items the loss is a mean over (weights validation averages)


def randn_rows(model: nn.Module, n: int, *shape: int, like: torch.Tensor) -> torch.Tensor:
    """``torch.randn(n, *shape)`` for this process's rows: under data parallelism the noise of the *global* batch
    is drawn and sliced, so every world size sees the same noise per sample and the RNG stays in lockstep."""
    s: RowShard | None = getattr(model, "row_shard", None)
    if s is None:
        return torch.randn(n, *shape, dtype=like.dtype, device=like.device)
    assert s.hi - s.lo == n, (s, n)
    return torch.randn(s.n, *shape, dtype=like.dtype, device=like.device)[s.lo:s.hi]


def rand_rows(model: nn.Module, n: int, *shape: int, like: torch.Tensor) -> torch.Tensor:
    """``torch.rand`` counterpart of ``randn_rows``."""
    s: RowShard | None = getattr(model, "row_shard", None)
    if s is None:
        return torch.rand(n, *shape, dtype=like.dtype, device=like.device)
    return torch.rand(s.n, *shape, dtype=like.dtype, device=like.device)[s.lo:s.hi]


class TrainerHooks(Protocol):
    """What a model's ``train_step`` may use from the Trainer."""

    def clip_and_step(self, name: str, loss: torch.Tensor, *, params: list[torch.nn.Parameter] | None = None
                      ) -> float: ...


def config_to_json(cfg: Any) -> str:
    return json.dumps(dataclasses.asdict(cfg), sort_keys=True)


def config_from_dict(cls: type, d: dict[str, Any]) -> Any:
    """Build a config dataclass from a dict, rejecting unknown keys (a file from a newer genloom, or a typo)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s): {', '.join(sorted(unknown))}")
    kw = {}
    for f in dataclasses.fields(cls):
        if f.name in d:
            v = d[f.name]
            kw[f.name] = tuple(v) if isinstance(v, list) else v
    return cls(**kw)


class GenerativeModel(nn.Module):
    """Base class with the default single-optimizer step. Subclasses set ``kind`` and ``config``."""

    kind: ClassVar[str]
    config_class: ClassVar[type]
    config: Any
    # how `--precision bf16` runs on a CPU: "autocast" (torch.autocast) or "matmul" (oneDNN rounds fp32 matmul
    # inputs to bf16: no casts, fastest for small MLPs); see train/precision.py
    cpu_bf16: ClassVar[str] = "autocast"
    row_shard: RowShard | None = None  # set by the Trainer under data parallelism (randn_rows)

    def loss(self, batch: Any) -> LossOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def generate(self, n: int, *, generator: torch.Generator | None = None, **kw: Any) -> Any:  # pragma: no cover
        raise NotImplementedError

    def configure_optimizers(self, tcfg: Any) -> dict[str, torch.optim.Optimizer]:
        """AdamW over all parameters; weight decay on matrices only (biases and norms excluded)."""
        decay = [p for p in self.parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in self.parameters() if p.requires_grad and p.dim() < 2]
        groups = [{"params": decay, "weight_decay": tcfg.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        if not tcfg.weight_decay:  # one group = one fused kernel call per step (the VAE step: −5 % time)
            groups = [{"params": decay + no_decay, "weight_decay": 0.0}]
        # fused AdamW: one kernel for all parameters (measured 1.3x faster per VAE epoch, docs/benchmarks.md)
        return {"main": torch.optim.AdamW(groups, lr=tcfg.lr, betas=tuple(tcfg.betas), fused=True)}

    def train_step(self, batch: Any, optimizers: dict[str, torch.optim.Optimizer], step: int,
                   trainer: TrainerHooks) -> LossOutput:
        out = self.loss(batch)
        grad_norm = trainer.clip_and_step("main", out.loss)
        out.metrics.setdefault("grad_norm", grad_norm)
        return out

    def export_extras(self) -> dict[str, str]:
        """Extra string metadata for the export (the LM puts its vocabulary here)."""
        return {}
