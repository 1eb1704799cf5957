"""``--precision auto`` for a training run: resolve the precision plan, on a CPU by timing a few training steps of
a throwaway copy of the run's own model in fp32 and in bf16 (``precision.time_alternating``; the verdict is cached
per CPU model and model shape by ``precision.plan``). Under data parallelism every rank takes rank 0's verdict."""
from __future__ import annotations

import copy
import dataclasses
import json
import math
from typing import TYPE_CHECKING, Any

import torch

from genloom.training import precision as prec

if TYPE_CHECKING:
    from genloom.training.trainer import Trainer


def precision_plan(tr: Trainer) -> prec.Plan:
    """Resolve --precision; ``auto`` on a CPU measures (train/precision.py). Under data parallelism every
    rank uses rank 0's verdict."""
    cpu_bf16 = getattr(tr.model, "cpu_bf16", "autocast")
    probe = key = None
    if tr.cfg.precision == "auto" and tr.device.type == "cpu":
        batch = next(iter(tr.train_src.epoch(torch.Generator().manual_seed(12345))), None)
        if batch is not None:
            shape = tuple(batch[0].shape)
            key = prec.model_key(tr.model.kind, config_json(tr.model), shape) + f" world {tr.dist.world}"
            probe = lambda: probe_steps(tr, batch, cpu_bf16)  # noqa: E731
    p = prec.plan(tr.cfg.precision, tr.device, cpu_bf16=cpu_bf16, probe=probe, probe_key=key or "")
    if tr.dist.enabled:
        choice = torch.tensor([1.0 if p.precision == "bf16" else 0.0])
        torch.distributed.broadcast(choice, src=0)
        want = "bf16" if float(choice) > 0 else "fp32"
        if want != p.precision:
            p = prec.plan(want, tr.device, cpu_bf16=cpu_bf16)
            p = dataclasses.replace(p, how="rank 0's choice")
    return p


def probe_steps(tr: Trainer, batch: Any, cpu_bf16: str) -> tuple[float, float]:
    """Seconds per training step in fp32 and bf16, on a copy of the model and optimizers (the run's
    weights, optimizer state and RNG streams are untouched)."""
    model = copy.deepcopy(tr.model)
    model.row_shard = getattr(tr.train_src, "current", None)
    opts = model.configure_optimizers(tr.cfg)
    hooks = ProbeHooks(opts)
    plans = {m: prec.plan(m, tr.device, cpu_bf16=cpu_bf16) for m in ("fp32", "bf16")}

    def step(mode: str) -> None:
        with prec.applied(plans[mode]), prec.autocast(plans[mode]):
            model.train_step(batch, opts, 0, hooks)

    with torch.random.fork_rng(devices=[]):
        return prec.time_alternating(step)


class ProbeHooks:
    """The Trainer hooks a model's ``train_step`` uses, for the precision probe's throwaway copy."""

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers

    def clip_and_step(self, name: str, loss: torch.Tensor, *, params: list[torch.nn.Parameter] | None = None
                      ) -> float:
        opt = self.optimizers[name]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return math.nan


def config_json(model: torch.nn.Module) -> str:
    cfg = getattr(model, "config", None)
    try:
        return json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str)
    except TypeError:
        return repr(cfg)
