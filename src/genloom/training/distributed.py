"""Data-parallel training with torch.distributed (launched by ``torchrun`` or ``genloom train --nproc N``).

The scheme (the same for the VAE, the GAN and the LM):
- Every rank builds the same model from the same seed (rank 0's weights are broadcast once to be sure) and draws
  the same *global* batch of indices from the same generator; it keeps its own rows (a disjoint shard of each
  epoch's permutation; ``RowShard``). Noise is drawn for the global batch and sliced the same way
  (``models.base.randn_rows``), so the RNG streams stay in lockstep and a run at any world size computes what the
  one-process run computes.
- After each backward, the gradients are all-reduced by hand into one flat buffer (not DDP's hooks: the GAN's
  penalties need a double backward with ``create_graph=True``, which DDP's reducer does not support — StyleGAN2-ADA
  all-reduces gradients itself for the same reason). Each rank's loss is weighted by its share of the global batch,
  so the averaged gradient is exactly the gradient of the global-batch mean.
- The same all-reduce carries a few stop flags (signal, time budget, non-finite loss), so a stop decided on any
  rank takes effect on every rank at the same step and no rank waits on a collective another one skipped.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from genloom.data.batches import RowShard, shard_rows
from genloom.errors import GenloomError
from genloom.models.base import LossOutput

# stop flags carried by the gradient all-reduce (summed over ranks)
FLAG_SIGNAL, FLAG_TIME, FLAG_NONFINITE = 0, 1, 2
N_FLAGS = 3


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> RowShard:
        return shard_rows(n, self.rank, self.world)


def launched_world() -> int:
    """WORLD_SIZE set by torchrun (1 when not launched by it)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def init(device: torch.device) -> Dist:
    """Join the process group torchrun described in the environment (gloo on CPU, nccl on CUDA)."""
    world = launched_world()
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = timedelta(seconds=float(os.environ.get("GENLOOM_DIST_TIMEOUT", 1800)))
        kw = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, timeout=timeout, **kw)
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", 0)))


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@torch.no_grad()
def broadcast_module(module: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers to every rank (one flat buffer per dtype)."""
    tensors = [t for t in list(module.parameters()) + list(module.buffers())]
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    seen: set[int] = set()
    for t in tensors:
        if id(t) not in seen:  # tied weights once
            seen.add(id(t))
            by_dtype.setdefault(t.dtype, []).append(t)
    for ts in by_dtype.values():
        flat = torch.cat([t.detach().reshape(-1) for t in ts])
        dist.broadcast(flat, src=0)
        _unflatten_into(flat, ts)


def allreduce_grads(params: list[torch.nn.Parameter], world: int, extras: torch.Tensor) -> torch.Tensor:
    """Average the gradients of ``params`` over ranks in place; return ``extras`` summed over ranks.
    One collective per call. Parameters without a gradient are skipped (the same ones on every rank)."""
    grads = [p.grad for p in params if p.grad is not None]
    dev = extras.device if not grads else grads[0].device
    flat = torch.cat([g.reshape(-1).float() for g in grads] + [extras.to(dev, torch.float32)])
    dist.all_reduce(flat)
    n = flat.numel() - extras.numel()
    if grads:
        _unflatten_into(flat[:n].div_(world), grads)
    return flat[n:]


def allreduce_sum(values: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(values)
    return values


def stop_reason(remote: torch.Tensor, local: torch.Tensor, local_reason: str | None, *, step: int,
                time_budget: float | None) -> str | None:
    """Why every rank stops now, from the stop flags summed over ranks (``remote``) and this rank's own
    (``local``, with the reason it gave), or None: a signal anywhere, a non-finite loss anywhere (this rank's own
    message if it was this rank's), the time budget."""
    if remote[FLAG_SIGNAL] > 0:
        return "interrupted (signal)"
    if remote[FLAG_NONFINITE] > 0:
        own = local_reason if local[FLAG_NONFINITE] else None
        return own or f"non-finite loss on another rank at step {step}: lower --lr or set --grad-clip"
    if remote[FLAG_TIME] > 0:
        return f"time budget of {time_budget:g} s spent"
    return None


def reduce_loss_output(out: LossOutput, d: Dist) -> tuple[float, dict[str, float]]:
    """The step's loss and metrics as host floats, averaged over ranks weighted by each rank's items."""
    keys = sorted(out.metrics)
    vals = [out.loss.detach().double() * out.n, torch.tensor(float(out.n), dtype=torch.float64)]
    vals += [torch.as_tensor(out.metrics[k], dtype=torch.float64).to(vals[0].device) * out.n for k in keys]
    t = torch.stack([v.to(vals[0].device).reshape(()) for v in vals]).cpu()  # one host sync, at log steps
    if d.enabled:
        allreduce_sum(t)
    n = float(t[1])
    return float(t[0]) / n, {k: float(v) / n for k, v in zip(keys, t[2:])}


def sum_over_ranks(tot: Any, n: float, sums: dict[str, Any], d: Dist) -> tuple[float, float, dict[str, float]]:
    """Host floats of a weighted sum, its count and metric sums — added up over ranks (one collective)."""
    keys = sorted(sums)
    if d.enabled:  # the metric names from rank 0 (a rank may have seen no batch)
        box = [keys]
        dist.broadcast_object_list(box, src=0)
        keys = box[0]
    vals = torch.tensor([float(tot), float(n)] + [float(sums.get(k, 0.0)) for k in keys], dtype=torch.float64)
    if d.enabled:
        allreduce_sum(vals)
    return float(vals[0]), float(vals[1]), {k: float(v) for k, v in zip(keys, vals[2:])}


def lost_process_error(e: RuntimeError, d: Dist, *, step: int, resume_cmd: str | None) -> GenloomError | None:
    """The one-line error for a collective that failed because another rank died (gloo: its sockets closed), or
    None when ``e`` is something else."""
    lost = isinstance(e, getattr(dist, "DistError", ())) or "closed by peer" in str(e) or "Connection reset" in str(e)
    if not d.enabled or not lost:
        return None
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return GenloomError(f"rank {d.rank}: lost another process of this run at step {step} ({first[:160]}); resume "
                        f"with: {resume_cmd or 'the same command with --resume'}")


def _unflatten_into(flat: torch.Tensor, tensors: list[torch.Tensor]) -> None:
    o = 0
    for t in tensors:
        k = t.numel()
        t.copy_(flat[o:o + k].view_as(t))
        o += k
