"""The flow family's math as plain functions (tested against closed forms): the straight path and its loss,
logit-normal time, the ODE samplers, guidance, reflow pairs, shortcut targets and the EMA rule. ``models/flow.py``
holds the model that uses them (and re-exports them) and the derivations in its docstring."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, NamedTuple

import torch
from torch import nn

from genloom.core.requests import FLOW_SAMPLERS, shortcut_problem

if TYPE_CHECKING:
    from genloom.models.flow import FlowConfig

SAMPLERS = FLOW_SAMPLERS  # euler | heun | shortcut: one list for the model and the request schema
Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, t scalar tensor) → v

def interpolate(z0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 − t)·z₀ + t·ε, with t (B,) broadcast over the other dims."""
    t = t.reshape(-1, *([1] * (z0.dim() - 1)))
    return (1 - t) * z0 + t * eps


def flow_matching_loss(v_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], z0: torch.Tensor,
                       eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Per-sample ‖v(x_t, t) − (ε − z₀)‖² averaged over dims, (B,). v_fn(x_t, t) with t (B,)."""
    xt = interpolate(z0, eps, t)
    target = eps - z0  # dx_t/dt along the straight path
    return (v_fn(xt, t) - target).pow(2).flatten(1).mean(1)


def logit_normal(n: int, *, mean: float = 0.0, std: float = 1.0, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
    """t = sigmoid(u), u ~ N(mean, std²): density ∝ exp(−(logit t − m)²/2s²) / (t(1 − t)), (n,) in (0, 1)."""
    return torch.sigmoid(mean + std * torch.randn(n, generator=generator))


def time_grid(steps: int, *, shift: float = 1.0) -> torch.Tensor:
    """steps + 1 times from 1 (noise) to 0 (data), uniform then shifted: t ← s·t / (1 + (s − 1)·t)."""
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return (shift * t / (1 + (shift - 1) * t)).float()


def integrate(v_fn: Velocity, x: torch.Tensor, ts: torch.Tensor, *, method: str = "heun",
              on_step: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None
              ) -> torch.Tensor:
    """Solve dx/dt = v(x, t) from ts[0] to ts[-1] (here 1 → 0).

    Euler:  x ← x + h·v(x, t),  h = t_{i+1} − t_i (negative: we run backwards in time); one evaluation a step.
    Heun:   x̃ = x + h·v₁, v₁ = v(x, t_i);  x ← x + h·(v₁ + v(x̃, t_{i+1}))/2 — second order, two evaluations a
            step (the straight path has no singularity at t = 0, so unlike EDM the last step is Heun too).
    ``on_step(i, t_i, x_i, v₁)`` sees the state and the first velocity of every step (for trajectories).
    """
    if method not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, not {method!r}")
    for i in range(len(ts) - 1):
        t, t_next = ts[i], ts[i + 1]
        h = t_next - t
        v1 = v_fn(x, t)
        if on_step is not None:
            on_step(i, t, x, v1)
        x_euler = x + h * v1
        x = x + h * 0.5 * (v1 + v_fn(x_euler, t_next)) if method == "heun" else x_euler
    return x


def guidance_at(t: float, guidance: float, interval: tuple[float, float]) -> float:
    """The guidance used at time t: w inside the interval [lo, hi], min(w, 1) outside (w = 0 stays 0)."""
    lo, hi = interval
    return guidance if lo <= t <= hi else min(guidance, 1.0)


class AdversarialBatch(NamedTuple):
    """A batch for the adversarial few-step stage: real images (B, 1, 28, 28) in [0, 1] for the critic, noise
    ε (B, C, 7, 7) and the teacher's latent for it (B, C, 7, 7) for the regression."""
    real: torch.Tensor
    noise: torch.Tensor
    target: torch.Tensor


class ReflowBatch(NamedTuple):
    """A batch of coupled pairs for reflow: noise ε (B, C, 7, 7) at t = 1, the teacher's latent z₀ = ODE(ε) at
    t = 0 (same shape), and the class each pair was generated for (B,) (num_classes: unconditional)."""
    noise: torch.Tensor
    target: torch.Tensor
    labels: torch.Tensor


def reflow_loss(v_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], noise: torch.Tensor,
                target: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The flow-matching loss on coupled pairs: ‖v(x_t, t) − (ε − z₀)‖², x_t = (1 − t)·z₀ + t·ε, (B,). With
    z₀ a deterministic function of ε the optimum is the straight-line velocity ε − z₀ of each pair."""
    return flow_matching_loss(v_fn, target, noise, t)


def network_evaluations(steps: int, method: str) -> int:
    """Denoiser calls per sample (guidance batches the conditional and unconditional calls into one)."""
    return 2 * steps if method == "heun" else steps


def check_sampler(config: FlowConfig, sampler: str, steps: int) -> None:
    """ValueError naming the fix when ``sampler`` cannot run ``steps`` steps on a model with ``config``."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, not {sampler!r}")
    problem = shortcut_problem(config.shortcut_levels, steps) if sampler == "shortcut" else None
    if problem:
        raise ValueError(problem)


@torch.no_grad()
def _lerp_ema(ema: nn.Module, net: nn.Module, batch_size: int, seen: float, c: FlowConfig) -> None:
    """ema ← β·ema + (1 − β)·θ, β = 0.5^(B/h), half-life h = min(ema_kimg·1000, ema_rampup·seen) samples
    (the GAN's schedule, ``models/gan.py``: short early, so short runs are not averaged over their start)."""
    if c.ema_kimg <= 0:
        return
    half_life = min(c.ema_kimg * 1000.0, c.ema_rampup * seen) if c.ema_rampup else c.ema_kimg * 1000.0
    beta = 0.5 ** (batch_size / max(half_life, 1e-8))
    torch._foreach_lerp_(list(ema.parameters()), list(net.parameters()), 1.0 - beta)


def shortcut_targets(net: Callable[..., torch.Tensor], z0: torch.Tensor, eps: torch.Tensor, y: torch.Tensor,
                     levels: int, *, generator: torch.Generator | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Self-consistency targets for a batch: (x_t, t, k, target), each level k uniform in 0 … L − 2 (step
    d = 2^−k), t uniform on {d, 2d, …, 1}, and target = the mean of two d/2 steps of ``net`` at level k + 1.
    net(x, t, y, level) → s; called without gradient."""
    B = len(z0)
    k = torch.randint(0, levels - 1, (B,), generator=generator)
    d = torch.pow(2.0, -k.to(torch.float32))  # (B,)
    t = (torch.floor(torch.rand(B, generator=generator) * 2.0 ** k) + 1) * d  # (B,) in {d, …, 1}
    xt = interpolate(z0, eps, t)
    half = d / 2
    with torch.no_grad():
        s1 = net(xt, t, y, k + 1)
        s2 = net(xt - half.reshape(-1, 1, 1, 1) * s1, t - half, y, k + 1)
    return xt, t, k, 0.5 * (s1 + s2)
