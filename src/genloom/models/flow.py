"""Latent flow matching (rectified flow) with a DiT denoiser and the autoencoder's decoder: genloom's kind "flow".

The path between a data latent z₀ and noise ε ~ N(0, I) is the straight line (Liu et al. 2022; Lipman et al.
2022; SD3, Esser et al. 2024)
    x_t = (1 − t)·z₀ + t·ε,   t ∈ [0, 1]   (t = 0 data, t = 1 noise),   dx_t/dt = ε − z₀.
The network v_θ(x_t, t, y) regresses that velocity: L = E_{t, z₀, ε} ‖v_θ(x_t, t, y) − (ε − z₀)‖², whose minimiser
is the conditional expectation v*(x, t) = E[ε − z₀ | x_t = x]. Sampling integrates dx/dt = v from t = 1 (noise) to
t = 0 (Euler or Heun). t is drawn logit-normal, t = sigmoid(n), n ~ N(m, s²) (SD3's best choice): more steps in
the middle of the path, where the velocity is hardest to predict.

Classifier-free guidance (Ho & Salimans 2022): the class is replaced by the "no class" token with probability
``label_drop`` in training; sampling uses v = v_∅ + w·(v_y − v_∅). w = 0 is the unconditional model, w = 1 the
conditional one, w > 1 guided.

Guidance interval (Kynkäänniemi et al. 2024): guidance w applies only while guidance_t_min ≤ t ≤ guidance_t_max;
outside it the sampler uses min(w, 1) (the conditional velocity: one batch of B rows, not 2B).

Reflow (Liu et al. 2022, "Flow straight and fast"): a student, initialised from the teacher, is trained with the
same loss on *coupled* pairs (ε, z₀ = ODE_teacher(ε)) instead of independent ones. The coupling is deterministic,
so the regression target ε − z₀ is a function of x_t and the student's paths are straight lines: one or two Euler
steps land where the teacher's many steps did. Pairs are generated with the teacher's guidance, so the student's
conditional velocity (w = 1) carries it (``distill_guidance`` records the teacher's w): one batch of B rows per
step, no 2B guidance batch. A fraction ``label_drop`` of the pairs is unconditional (w = 0, "no class" token),
so w = 0 still samples the unconditional model.

Shortcut models (Frans et al. 2024, "One step diffusion via shortcut models"): few-step sampling learned in the
same run, no teacher and no second stage. The DiT is also conditioned on a step-size level k (step d = 2^−k,
k = 0 … L − 1) and s(x, t, k) predicts the *average* velocity over the next step, so x_{t−d} = x_t − d·s. The finest
level L − 1 is the flow-matching velocity (its loss, as above); a fraction ``shortcut_frac`` of each batch instead
trains level k < L − 1 on self-consistency — one step of size d equals two of size d/2 under the (EMA) network:
    s(x_t, t, k) ← ½·[s(x_t, t, k + 1) + s(x_t − (d/2)·s(x_t, t, k + 1), t − d/2, k + 1)]   (no gradient),
with t on the grid the k-level sampler visits (t = d, 2d, …, 1). Sampling with ``sampler="shortcut"`` and
2^k steps takes 2^k Euler steps of size d at level k — 2^k network evaluations.

Adversarial few-step generator (``adv_steps`` = n > 0; in the spirit of ADD, Sauer et al. 2023, and of the GAN
family here): after the flow model has trained, a copy ``adv`` of its network is fine-tuned as a generator whose
output is the n-step shortcut sampler's, G(ε) = decode(x₀), x₀ from n Euler steps of size 1/n at level log₂ n.
A critic (the GAN family's conv critic, R3GAN loss with R1 + R2) sees decoded samples against real images, and a
regression ‖x₀ − ODE_teacher(ε)‖² on the teacher's latents keeps G on the teacher's coupling (no mode collapse):
    L_G = adv_loss_weight·E[softplus(D(x) − D(G(ε)))] + E‖x₀(ε) − z_teacher(ε)‖².
The teacher (``dit``/``ema``) is frozen; ``sampler="shortcut"`` at n steps then runs ``adv_ema``, every other
sampler and step count the teacher.

The latent is the autoencoder's posterior (μ + σ·ε), normalised per channel by the training set's mean and
standard deviation (stored in the file), so that data and noise have the same scale.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from genloom.core.requests import shortcut_problem
from genloom.models.autoencoder import AutoencoderConfig, Decoder
from genloom.models.base import GenerativeModel, LossOutput, TrainerHooks
from genloom.models.dit import DiT
from genloom.models.gan import r3gan_critic_loss, r3gan_generator_loss
from genloom.models.flow_math import (SAMPLERS, AdversarialBatch, ReflowBatch, Velocity, _lerp_ema, check_sampler,
                                      flow_matching_loss, guidance_at, integrate, interpolate, logit_normal,
                                      network_evaluations, reflow_loss, shortcut_targets, time_grid)
from genloom.models.gan_nets import ConvCritic

__all__ = ["FlowConfig", "FlowModel", "SAMPLERS", "AdversarialBatch", "ReflowBatch", "Velocity", "check_sampler",
           "flow_matching_loss", "guidance_at", "integrate", "interpolate", "logit_normal", "network_evaluations",
           "reflow_loss", "shortcut_targets", "time_grid"]


@dataclass(frozen=True)
class FlowConfig:
    # the autoencoder whose decoder this model carries (its latent is (channels, 7, 7))
    ae_channels: int = 4
    ae_dim: int = 32
    # the DiT denoiser
    patch: int = 2  # 7×7 latent zero-padded to 8×8: 16 tokens (patch 1: 49 tokens, ~3x the cost)
    dim: int = 128
    depth: int = 4
    heads: int = 4
    num_classes: int = 10  # 0 = unconditional only
    label_drop: float = 0.1  # probability of the "no class" token in training (for guidance)
    t_mean: float = 0.0  # logit-normal time: t = sigmoid(n), n ~ N(t_mean, t_std²)
    t_std: float = 1.0
    ema_kimg: float = 10.0  # EMA half-life cap in thousands of samples (0 = no EMA), as the GAN's
    ema_rampup: float = 0.05
    # sampler settings used when a call does not give its own
    sampler: str = "heun"  # euler | heun | shortcut (a shortcut model's learned steps)
    sample_steps: int = 4  # ODE steps (Heun: 2·steps network evaluations); 8 measured no better (docs/benchmarks.md)
    # w: 0 unconditional, 1 conditional, > 1 guided. w = 4 on t ≤ 0.5 only (the low-noise half): ≥ 95 % of the
    # samples classified as asked at the lowest FID measured (docs/benchmarks.md, "Guidance scale and interval")
    guidance: float = 4.0
    time_shift: float = 1.0  # s: t ← s·t / (1 + (s − 1)·t) on the sampling grid (s > 1: more steps near noise)
    guidance_t_min: float = 0.0  # guidance interval: w applies for t in [min, max], min(w, 1) outside
    guidance_t_max: float = 0.5
    distill_guidance: float = 0.0  # > 0: a reflow student whose conditional velocity carries the teacher's w
    # shortcut model: L step-size levels (steps 1, 2, …, 2^(L−1)); 0 = a plain flow-matching model
    shortcut_levels: int = 0
    shortcut_frac: float = 0.25  # the fraction of each batch trained on self-consistency (Frans et al.: 1/4)
    # adversarial few-step generator: > 0 = the shortcut sampler at this many steps runs ``adv``, a copy of the
    # network fine-tuned with a critic on decoded images (plus a regression on the teacher's latents)
    adv_steps: int = 0
    adv_loss_weight: float = 1.0  # L_G = adv_loss_weight·L_adv + ‖z − z_teacher‖² (per latent dimension)
    adv_grad_steps: int = 1  # backpropagate through the last this many of the adv_steps steps
    adv_gamma: float = 0.1  # R1 + R2 weight of the critic (R3GAN's γ, as the GAN family's default)
    image_shape: tuple[int, ...] = (1, 28, 28)

    def __post_init__(self) -> None:
        if self.shortcut_levels == 1 or not 0 <= self.shortcut_levels <= 12 or not 0 < self.shortcut_frac < 1:
            raise ValueError(f"shortcut_levels must be 0 (off) or 2 … 12, shortcut_frac in (0, 1); got "
                             f"{self.shortcut_levels}, {self.shortcut_frac}")
        check_sampler(self, self.sampler, self.sample_steps)
        if self.adv_steps:
            problem = shortcut_problem(self.shortcut_levels, self.adv_steps)
            if problem or self.adv_grad_steps < 1 or self.adv_loss_weight < 0 or self.adv_gamma < 0:
                raise ValueError(f"adv_steps: {problem or 'adv_grad_steps must be ≥ 1, adv_loss_weight and adv_gamma ≥ 0'}")
        if min(self.ae_channels, self.ae_dim, self.patch, self.dim, self.depth, self.heads, self.sample_steps) < 1:
            raise ValueError("ae_channels, ae_dim, patch, dim, depth, heads and sample_steps must be ≥ 1")
        if self.patch > 7:
            raise ValueError(f"patch must be ≤ 7 (the latent is 7×7), not {self.patch}")
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        if not 0.0 <= self.label_drop < 1.0 or self.num_classes < 0:
            raise ValueError("label_drop must be in [0, 1), num_classes ≥ 0")
        if self.t_std <= 0 or self.time_shift <= 0 or self.guidance < 0 or self.ema_kimg < 0:
            raise ValueError("t_std and time_shift must be > 0, guidance and ema_kimg ≥ 0")
        if not 0.0 <= self.guidance_t_min <= self.guidance_t_max <= 1.0 or self.distill_guidance < 0:
            raise ValueError("the guidance interval must satisfy 0 ≤ guidance_t_min ≤ guidance_t_max ≤ 1, "
                             "distill_guidance ≥ 0")

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.ae_channels, 7, 7)


class FlowModel(GenerativeModel):
    """kind "flow": the DiT (and its EMA) plus the frozen decoder and the latent normalisation."""

    kind: ClassVar[str] = "flow"
    config_class: ClassVar[type] = FlowConfig
    progress_metrics: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: FlowConfig) -> None:
        super().__init__()
        self.config = c = config
        self.decoder = Decoder(AutoencoderConfig(channels=c.ae_channels, dim=c.ae_dim)).requires_grad_(False)
        self.dit = DiT(in_channels=c.ae_channels, size=7, patch=c.patch, dim=c.dim, depth=c.depth, heads=c.heads,
                       num_classes=c.num_classes, levels=c.shortcut_levels)
        self.ema = copy.deepcopy(self.dit).requires_grad_(False)
        self.register_buffer("latent_mean", torch.zeros(c.ae_channels))  # per channel, of the posterior samples
        self.register_buffer("latent_std", torch.ones(c.ae_channels))
        self.register_buffer("ema_images", torch.zeros((), dtype=torch.float64))
        self.register_buffer("sample_from_ema", torch.tensor(c.ema_kimg > 0))
        if c.adv_steps:  # the adversarial few-step generator, its EMA and its critic; the teacher is frozen
            self.dit.requires_grad_(False)
            self.adv = copy.deepcopy(self.dit).requires_grad_(True)
            self.adv_ema = copy.deepcopy(self.dit)
            self.critic = ConvCritic(dim=32, kernel=4, num_classes=0, norm="none", spectral=False)
            self.register_buffer("adv_images", torch.zeros((), dtype=torch.float64))

    def start_adversarial(self) -> None:
        """Copy the teacher's sampling network into the generator and its EMA (the adversarial stage's start)."""
        src = self.ema if bool(self.sample_from_ema) else self.dit
        self.adv.load_state_dict(src.state_dict())
        self.adv_ema.load_state_dict(src.state_dict())
        self.adv_images.zero_()

    # -- latents --------------------------------------------------------------------------------------------
    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.latent_mean[:, None, None]) / self.latent_std[:, None, None]

    def decode(self, z_n: torch.Tensor) -> torch.Tensor:
        """Normalised latents (B, C, 7, 7) → images (B, 1, 28, 28) in [0, 1]."""
        z = z_n * self.latent_std[:, None, None] + self.latent_mean[:, None, None]
        return torch.sigmoid(self.decoder(z))

    # -- training -------------------------------------------------------------------------------------------
    def loss(self, batch: Any) -> LossOutput:
        """batch = (μ, σ, y): the normalised posterior of each image (B, C, 7, 7) twice, and its class (B,);
        or a ``ReflowBatch`` of teacher pairs (reflow: t uniform in [0, 1], every step count sees its times);
        or an ``AdversarialBatch`` (the generator's loss, no step: for inspection)."""
        c = self.config
        if isinstance(batch, AdversarialBatch):
            z = self.few_step(self.adv, batch.noise, c.adv_steps)
            adv = r3gan_generator_loss(self.critic, batch.real, self.decode(z), None)
            reg = (z - batch.target).pow(2).flatten(1).mean(1).mean()
            return LossOutput((c.adv_loss_weight * adv + reg).detach(), {"g_adv": adv.detach(), "reg": reg.detach()},
                              n=len(z))
        if isinstance(batch, ReflowBatch):
            t = torch.rand(len(batch.noise))
            per = reflow_loss(lambda xt, tt: self.dit(xt, tt, batch.labels), batch.noise, batch.target, t)
            return LossOutput(per.mean(), {}, n=len(per))
        mu, sigma, y = batch
        z0 = mu + sigma * torch.randn_like(mu)  # a posterior sample, as the decoder was trained on
        B = len(z0)
        t = logit_normal(B, mean=c.t_mean, std=c.t_std)
        eps = torch.randn_like(z0)
        null = torch.full_like(y, c.num_classes)
        y = torch.where(torch.rand(B) < c.label_drop, null, y) if c.num_classes else null  # label dropout
        # a shortcut model's first m rows train self-consistency (targets from the EMA), the rest flow matching
        m = min(int(B * c.shortcut_frac), B - 1) if c.shortcut_levels else 0
        if not m:
            per = flow_matching_loss(lambda xt, tt: self.dit(xt, tt, y), z0, eps, t)  # (B,)
            return LossOutput(per.mean(), {}, n=B)
        target_net = self.ema if c.ema_kimg > 0 else self.dit
        xs, ts, ks, target = shortcut_targets(target_net, z0[:m], eps[:m], y[:m], c.shortcut_levels)
        sc = (self.dit(xs, ts, y[:m], ks) - target).pow(2).flatten(1).mean(1)  # (m,)
        fm = flow_matching_loss(lambda xt, tt: self.dit(xt, tt, y[m:]), z0[m:], eps[m:], t[m:])  # (B − m,)
        per = torch.cat([sc, fm])
        return LossOutput(per.mean(), {"loss_fm": fm.mean().detach(), "loss_sc": sc.mean().detach()}, n=B)

    def configure_optimizers(self, tcfg: Any) -> dict[str, torch.optim.Optimizer]:
        """AdamW for the DiT; with ``adv_steps``, Adam for the generator and the critic (R3GAN's betas (0, 0.99))."""
        if not self.config.adv_steps:
            return super().configure_optimizers(tcfg)
        adam = dict(lr=tcfg.lr, betas=(0.0, 0.99), fused=True)
        return {"adv": torch.optim.Adam(self.adv.parameters(), **adam),
                "critic": torch.optim.Adam(self.critic.parameters(), **adam)}

    def train_step(self, batch: Any, optimizers: dict[str, torch.optim.Optimizer], step: int,
                   trainer: TrainerHooks) -> LossOutput:
        if isinstance(batch, AdversarialBatch):
            return self.adversarial_step(batch, trainer)
        out = super().train_step(batch, optimizers, step, trainer)
        self.update_ema(out.n)
        return out

    def adversarial_step(self, batch: AdversarialBatch, trainer: TrainerHooks) -> LossOutput:
        """One critic step on (real, G(ε)), then one generator step on L_G (module docstring), one batch of fakes."""
        c = self.config
        z = self.few_step(self.adv, batch.noise, c.adv_steps, grad_steps=c.adv_grad_steps)  # (B, C, 7, 7)
        fake = self.decode(z)  # (B, 1, 28, 28): the frozen decoder passes the gradient to z
        d_loss, m = r3gan_critic_loss(self.critic, batch.real, fake.detach(), None, gamma=c.adv_gamma)
        m["d_grad_norm"] = trainer.clip_and_step("critic", d_loss)
        self.critic.requires_grad_(False)  # no gradient spent on the critic's weights in the generator step
        try:
            adv = r3gan_generator_loss(self.critic, batch.real, fake, None)
        finally:
            self.critic.requires_grad_(True)
        reg = (z - batch.target).pow(2).flatten(1).mean(1).mean()  # on the teacher's coupling
        g_loss = c.adv_loss_weight * adv + reg
        m["g_grad_norm"] = trainer.clip_and_step("adv", g_loss)
        self.adv_images: torch.Tensor = self.adv_images + len(z)
        _lerp_ema(self.adv_ema, self.adv, len(z), float(self.adv_images), c)
        m.update(d_loss=d_loss.detach(), g_adv=adv.detach(), reg=reg.detach())
        return LossOutput(g_loss.detach(), m, n=len(z))

    def few_step(self, net: nn.Module, noise: torch.Tensor, steps: int, *, grad_steps: int = 0) -> torch.Tensor:
        """The shortcut sampler's latents (label-free): ``steps`` Euler steps of size 1/steps at level log₂ steps,
        from t = 1; the last ``grad_steps`` steps keep the autograd graph (the others run without it)."""
        B, d = len(noise), 1.0 / steps
        y = torch.full((B,), self.config.num_classes, dtype=torch.long)
        k = torch.full((B,), steps.bit_length() - 1, dtype=torch.long)
        x = noise
        for i in range(steps):
            with torch.set_grad_enabled(torch.is_grad_enabled() and i >= steps - grad_steps):
                x = x - d * net(x, torch.full((B,), 1.0 - i * d), y, k)
        return x

    @torch.no_grad()
    def update_ema(self, batch_size: int) -> None:
        """ema ← β·ema + (1 − β)·θ (``_lerp_ema``), counting the images seen."""
        self.ema_images: torch.Tensor = self.ema_images + batch_size
        _lerp_ema(self.ema, self.dit, batch_size, float(self.ema_images), self.config)

    # -- sampling -------------------------------------------------------------------------------------------
    def velocity(self, net: nn.Module, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None,
                 guidance: float, level: int | None = None) -> torch.Tensor:
        """v = v_∅ + w·(v_y − v_∅); one batched call of 2B rows when 0 < w ≠ 1. ``level``: a shortcut model's
        step-size level (None: the velocity)."""
        B = len(x)
        tt = t.reshape(()).expand(B).to(x.dtype)
        null = torch.full((B,), self.config.num_classes, dtype=torch.long)
        k = None if level is None else torch.full((B,), level, dtype=torch.long)
        if y is None or guidance == 0:
            return net(x, tt, null, k)
        if guidance == 1:
            return net(x, tt, y, k)
        k2 = None if k is None else torch.cat([k, k])
        v = net(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([y, null]), k2)  # (2B, C, 7, 7)
        v_y, v_null = v[:B], v[B:]
        return v_null + guidance * (v_y - v_null)

    def labels_for(self, n: int, labels: torch.Tensor | None) -> torch.Tensor | None:
        if not self.config.num_classes:
            return None
        if labels is None:
            return torch.arange(n) % self.config.num_classes  # cycle through the classes
        labels = torch.as_tensor(labels, dtype=torch.long)
        if len(labels) != n or labels.min() < 0 or labels.max() >= self.config.num_classes:
            raise ValueError(f"labels must be {n} class indices in [0, {self.config.num_classes})")
        return labels

    @torch.no_grad()
    def sample_latents(self, noise: torch.Tensor, *, labels: torch.Tensor | None = None, steps: int | None = None,
                       guidance: float | None = None, sampler: str | None = None, ema: bool | None = None,
                       guidance_interval: tuple[float, float] | None = None,
                       on_step: Callable[..., None] | None = None) -> torch.Tensor:
        """Integrate from the given noise (B, C, 7, 7) at t = 1 to normalised latents at t = 0."""
        c = self.config
        steps = c.sample_steps if steps is None else int(steps)
        guidance = c.guidance if guidance is None else float(guidance)
        interval = (c.guidance_t_min, c.guidance_t_max) if guidance_interval is None else \
            (float(guidance_interval[0]), float(guidance_interval[1]))
        if steps < 1 or guidance < 0 or not 0 <= interval[0] <= interval[1] <= 1:
            raise ValueError("steps must be ≥ 1, guidance ≥ 0 and the guidance interval within [0, 1]")
        sampler = sampler or c.sampler
        check_sampler(c, sampler, steps)
        use_ema = bool(self.sample_from_ema) if ema is None else ema
        net = self.ema if use_ema else self.dit
        y = self.labels_for(len(noise), labels)
        level = None
        if sampler == "shortcut":  # 2^k Euler steps of size 2^−k at level k, on the uniform grid it was trained on
            level, sampler = steps.bit_length() - 1, "euler"
            if steps == c.adv_steps:  # the adversarially fine-tuned generator
                net = self.adv_ema if use_ema else self.adv
        ts = time_grid(steps, shift=1.0 if level is not None else c.time_shift)
        return integrate(lambda x, t: self.velocity(net, x, t, y, guidance_at(float(t), guidance, interval), level),
                         noise, ts, method=sampler, on_step=on_step)

    @torch.no_grad()
    def reflow_pairs(self, n: int, *, generator: torch.Generator | None = None, batch_size: int = 256,
                     uncond_frac: float | None = None, **sample_kw: Any) -> ReflowBatch:
        """n coupled pairs (ε, z₀ = this model's ODE solution from ε, y) for reflow, at this model's sampler
        settings unless ``sample_kw`` gives others. Classes cycle; a fraction ``uncond_frac`` (default
        ``label_drop``) of the pairs is drawn unconditionally (w = 0) with the "no class" label."""
        c = self.config
        frac = c.label_drop if uncond_frac is None else uncond_frac
        noise = torch.randn(n, *c.latent_shape, generator=generator)
        if c.num_classes:
            labels = torch.arange(n) % c.num_classes
            uncond = torch.rand(n, generator=generator) < frac
            labels[uncond] = c.num_classes
        else:
            labels = torch.full((n,), c.num_classes, dtype=torch.long)
            uncond = torch.ones(n, dtype=torch.bool)
        target = torch.empty_like(noise)
        for is_uncond in (False, True):
            idx = torch.nonzero(uncond == is_uncond).flatten()
            for i in range(0, len(idx), batch_size):
                j = idx[i:i + batch_size]
                kw = {**sample_kw, "guidance": 0.0} if is_uncond else sample_kw
                y = None if is_uncond else labels[j]
                target[j] = self.sample_latents(noise[j], labels=y, **kw)
        return ReflowBatch(noise, target, labels)

    @torch.no_grad()
    def generate(self, n: int, *, generator: torch.Generator | None = None, labels: torch.Tensor | None = None,
                 steps: int | None = None, guidance: float | None = None, sampler: str | None = None,
                 ema: bool | None = None, guidance_interval: tuple[float, float] | None = None,
                 **kw: Any) -> torch.Tensor:
        """n images (n, 1, 28, 28) in [0, 1]; noise from ``generator``. A conditional model without labels cycles
        through the classes (and ``guidance=0`` ignores them: the unconditional model)."""
        noise = torch.randn(n, *self.config.latent_shape, generator=generator)
        z = self.sample_latents(noise, labels=labels, steps=steps, guidance=guidance, sampler=sampler, ema=ema,
                                guidance_interval=guidance_interval)
        return self.decode(z)
