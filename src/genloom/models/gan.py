"""GANs for 28×28 images: WGAN-GP (Gulrajani et al. 2017), hinge loss with a spectral-norm critic (Miyato et al.
2018) and R3GAN's relativistic pairing loss with R1 + R2 (Huang et al. 2024); MLP or conv nets (``gan_nets.py``).

One Trainer step is one generator step: the batch holds ``n_critic`` real minibatches, the critic takes one step
on each, then the generator takes one. An exponential moving average (EMA) of the generator weights is part of the
model's state (so checkpoints and resume carry it); ``generate`` uses it when ``sample_from_ema`` is set.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from genloom.errors import ConfigError
from genloom.models.base import GenerativeModel, LossOutput, TrainerHooks, rand_rows, randn_rows
from genloom.models.gan_nets import ConvCritic, ConvGenerator, MLPCritic, MLPGenerator

LOSSES = ("wgan-gp", "hinge", "r3gan")
Critic = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]


@dataclass(frozen=True)
class GANConfig:
    arch: str = "conv"  # conv | mlp
    loss: str = "wgan-gp"  # wgan-gp | hinge | r3gan
    latent: int = 128
    dim: int = 64  # conv: DIM (channels of the first critic layer); mlp: hidden width
    kernel: int = 5  # conv kernel size (the paper's 5; 4 or 3 are cheaper)
    critic_norm: str = "none"  # none | layer (never batch norm: the penalty is per sample)
    gen_norm: str = "none"  # conv generator: none | batch (DCGAN's batch norm; the critic never has it)
    n_critic: int = 5  # critic steps per generator step
    gp_weight: float = 10.0  # wgan-gp: λ; r3gan: γ (the R1 + R2 weight is γ/2)
    num_classes: int = 0  # > 0: conditional generation by class label
    ema_kimg: float = 10.0  # EMA half-life cap, in thousands of images (0 = no EMA)
    ema_rampup: float = 0.05  # EMA half-life ≤ this fraction of the images seen so far (helps short runs)
    image_shape: tuple[int, ...] = (1, 28, 28)

    def __post_init__(self) -> None:
        if self.arch not in ("conv", "mlp"):
            raise ConfigError(f"arch must be 'conv' or 'mlp', not {self.arch!r}")
        if self.loss not in LOSSES:
            raise ConfigError(f"loss must be one of {', '.join(LOSSES)}, not {self.loss!r}")
        if self.critic_norm not in ("none", "layer"):
            raise ConfigError(f"critic_norm must be 'none' or 'layer' (batch norm breaks the per-sample penalty), "
                             f"not {self.critic_norm!r}")
        if self.gen_norm not in ("none", "batch"):
            raise ConfigError(f"gen_norm must be 'none' or 'batch', not {self.gen_norm!r}")
        if self.kernel not in (3, 4, 5):
            raise ConfigError(f"kernel must be 3, 4 or 5, not {self.kernel}")
        if min(self.latent, self.dim, self.n_critic) < 1 or self.num_classes < 0:
            raise ConfigError("latent, dim and n_critic must be ≥ 1, num_classes ≥ 0")
        if self.gp_weight < 0 or self.ema_kimg < 0 or self.ema_rampup < 0:
            raise ConfigError("gp_weight, ema_kimg and ema_rampup must be ≥ 0")
        if tuple(self.image_shape) != (1, 28, 28):
            raise ConfigError("the GAN nets are built for (1, 28, 28) images")


# -- losses (each a mean over the batch; math next to the line) ------------------------------------------------
def gradient_penalty(critic: Critic, real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor,
                     labels: torch.Tensor | None = None) -> torch.Tensor:
    """WGAN-GP penalty E[(‖∇_x̂ D(x̂)‖₂ − 1)²] at x̂ = ε·x + (1 − ε)·x̃, with ε (B, 1, 1, 1) ~ U[0, 1] per sample."""
    x_hat = (eps * real + (1 - eps) * fake).detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat, labels).sum(), x_hat, create_graph=True)  # (B, 1, 28, 28)
    norm = grad.flatten(1).pow(2).sum(1).add(1e-12).sqrt()  # ‖∇‖₂ per sample, (B,)
    return (norm - 1).pow(2).mean()


def wgan_gp_critic_loss(critic: Critic, real: torch.Tensor, fake: torch.Tensor, labels: torch.Tensor | None,
                        *, lam: float, eps: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Algorithm 1, line 7: L = D(x̃) − D(x) + λ(‖∇_x̂ D(x̂)‖₂ − 1)², averaged over the minibatch.
    Real, fake and interpolates go through the critic as one batch (no batch coupling, so this is exact)."""
    B = len(real)
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)  # x̂ = εx + (1 − ε)x̃
    lab3 = labels.repeat(3) if labels is not None else None
    d = critic(torch.cat([real, fake, x_hat]), lab3)  # (3B,)
    d_real, d_fake, d_hat = d[:B], d[B:2 * B], d[2 * B:]
    (grad,) = torch.autograd.grad(d_hat.sum(), x_hat, create_graph=True)  # ∇_x̂ D(x̂), (B, 1, 28, 28)
    norm = grad.flatten(1).pow(2).sum(1).add(1e-12).sqrt()  # (B,)
    gp = (norm - 1).pow(2).mean()
    w = d_real.mean() - d_fake.mean()  # the Wasserstein estimate E[D(x)] − E[D(x̃)]
    loss = -w + lam * gp
    return loss, {"w_dist": w.detach(), "penalty": gp.detach()}


def hinge_critic_loss(critic: Critic, real: torch.Tensor, fake: torch.Tensor, labels: torch.Tensor | None,
                      ) -> tuple[torch.Tensor, dict[str, float]]:
    """Hinge loss (Miyato et al. 2018): L_D = E[max(0, 1 − D(x))] + E[max(0, 1 + D(x̃))]."""
    B = len(real)
    d = critic(torch.cat([real, fake]), labels.repeat(2) if labels is not None else None)  # (2B,)
    d_real, d_fake = d[:B], d[B:]
    loss = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
    return loss, {"w_dist": (d_real.mean() - d_fake.mean()).detach(), "penalty": torch.zeros((), device=d.device)}


def r3gan_critic_loss(critic: Critic, real: torch.Tensor, fake: torch.Tensor, labels: torch.Tensor | None,
                      *, gamma: float) -> tuple[torch.Tensor, dict[str, float]]:
    """R3GAN (Huang et al. 2024, eq. 2 + R1 + R2): relativistic pairing L_D = E[f(D(x̃) − D(x))], f = softplus,
    plus zero-centred penalties (γ/2)·E‖∇_x D(x)‖² (R1, on real data) + (γ/2)·E‖∇_x̃ D(x̃)‖² (R2, on fakes)."""
    B = len(real)
    xs = torch.cat([real, fake]).detach().requires_grad_(True)  # (2B, 1, 28, 28)
    d = critic(xs, labels.repeat(2) if labels is not None else None)  # (2B,)
    d_real, d_fake = d[:B], d[B:]
    adv = F.softplus(d_fake - d_real).mean()  # paired: each fake against the real at the same index
    (grad,) = torch.autograd.grad(d.sum(), xs, create_graph=True)  # per-sample gradients, (2B, 1, 28, 28)
    sq = grad.flatten(1).pow(2).sum(1)  # ‖∇‖² per sample, (2B,)
    r1, r2 = sq[:B].mean(), sq[B:].mean()
    loss = adv + gamma / 2 * (r1 + r2)
    return loss, {"w_dist": (d_real.mean() - d_fake.mean()).detach(), "penalty": (r1 + r2).detach()}


def r3gan_generator_loss(critic: Critic, real: torch.Tensor, fake: torch.Tensor, labels: torch.Tensor | None
                         ) -> torch.Tensor:
    """R3GAN's generator side: L_G = E[f(D(x) − D(G(z)))], f = softplus; gradient through the fakes only."""
    d_fake = critic(fake, labels)  # (B,)
    with torch.no_grad():
        d_real = critic(real, labels)
    return F.softplus(d_real - d_fake).mean()


class GAN(GenerativeModel):
    kind: ClassVar[str] = "gan"
    config_class: ClassVar[type] = GANConfig
    progress_metrics: ClassVar[tuple[str, ...]] = ("d_loss", "g_loss", "w_dist", "penalty")

    def __init__(self, config: GANConfig) -> None:
        super().__init__()
        self.config = c = config
        spectral = c.loss == "hinge"  # SN-GAN: spectral normalization on every critic layer
        if c.arch == "conv":
            self.generator: nn.Module = ConvGenerator(latent=c.latent, dim=c.dim, kernel=c.kernel,
                                                      num_classes=c.num_classes, norm=c.gen_norm)
            self.critic: nn.Module = ConvCritic(dim=c.dim, kernel=c.kernel, num_classes=c.num_classes,
                                                norm=c.critic_norm, spectral=spectral)
        else:
            self.generator = MLPGenerator(latent=c.latent, dim=c.dim, num_classes=c.num_classes)
            self.critic = MLPCritic(dim=c.dim, num_classes=c.num_classes, norm=c.critic_norm, spectral=spectral)
        # The EMA generator: a frozen copy updated after every generator step; buffers keep count for resume.
        self.ema = copy.deepcopy(self.generator).requires_grad_(False)
        self.register_buffer("ema_images", torch.zeros((), dtype=torch.float64))  # images seen by the EMA
        self.register_buffer("sample_from_ema", torch.tensor(c.ema_kimg > 0))

    @property
    def batch_groups(self) -> int:
        """A training batch is n_critic minibatches; data parallelism splits each one across ranks."""
        return self.config.n_critic

    # -- sampling -----------------------------------------------------------------------------------------------
    def _labels(self, n: int, labels: torch.Tensor | None) -> torch.Tensor | None:
        if not self.config.num_classes:
            return None
        return torch.arange(n) % self.config.num_classes if labels is None else labels

    @torch.no_grad()
    def generate(self, n: int, *, generator: torch.Generator | None = None, labels: torch.Tensor | None = None,
                 ema: bool | None = None, **kw: Any) -> torch.Tensor:
        """n samples in [0, 1], (n, 1, 28, 28); z ~ N(0, I) drawn from ``generator``. A conditional model with
        no labels cycles through the classes."""
        use_ema = bool(self.sample_from_ema) if ema is None else ema
        net = self.ema if use_ema else self.generator
        w = self.generator.fc.weight if self.config.arch == "conv" else self.generator.net[0].weight
        z = torch.randn(n, self.config.latent, generator=generator, dtype=w.dtype).to(w.device)
        labels = self._labels(n, labels)
        if labels is not None:
            labels = labels.to(w.device)
        was = net.training
        net.eval()  # batch-norm generators sample with their running statistics: per-sample, deterministic
        try:
            return net(z, labels)
        finally:
            net.train(was)

    def loss(self, batch: Any) -> LossOutput:
        """The critic loss on one real minibatch (no step): for inspection and validation."""
        x, y = batch
        labels = y if self.config.num_classes else None
        with torch.no_grad():
            fake = self.generator(randn_rows(self, len(x), self.config.latent, like=x), labels)
        with torch.enable_grad():
            loss, m = self.critic_loss(x, fake, labels)
        return LossOutput(loss.detach(), m, n=len(x))

    def critic_loss(self, real: torch.Tensor, fake: torch.Tensor, labels: torch.Tensor | None
                    ) -> tuple[torch.Tensor, dict[str, float]]:
        c = self.config
        if c.loss == "wgan-gp":
            eps = rand_rows(self, len(real), 1, 1, 1, like=real)  # ε ~ U[0, 1], one per sample
            return wgan_gp_critic_loss(self.critic, real, fake, labels, lam=c.gp_weight, eps=eps)
        if c.loss == "hinge":
            return hinge_critic_loss(self.critic, real, fake, labels)
        return r3gan_critic_loss(self.critic, real, fake, labels, gamma=c.gp_weight)

    def generator_loss(self, real: torch.Tensor, fake: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if self.config.loss == "r3gan":
            return r3gan_generator_loss(self.critic, real, fake, labels)
        return -self.critic(fake, labels).mean()  # WGAN and hinge: L_G = −E[D(G(z))]

    # -- training -------------------------------------------------------------------------------------------------
    def configure_optimizers(self, tcfg: Any) -> dict[str, torch.optim.Optimizer]:
        """Adam for each player (the WGAN-GP paper: lr 1e-4, betas (0.5, 0.9), no weight decay)."""
        adam = dict(lr=tcfg.lr, betas=tuple(tcfg.betas), weight_decay=tcfg.weight_decay, fused=True)
        return {"critic": torch.optim.Adam(self.critic.parameters(), **adam),
                "generator": torch.optim.Adam(self.generator.parameters(), **adam)}

    def train_step(self, batch: Any, optimizers: dict[str, torch.optim.Optimizer], step: int,
                   trainer: TrainerHooks) -> LossOutput:
        """Algorithm 1 of Gulrajani et al.: n_critic critic steps, each on its own real minibatch, then one
        generator step. ``batch`` holds n_critic·B real images."""
        c = self.config
        x, y = batch
        B = len(x) // c.n_critic
        if B < 1:
            raise ValueError(f"a GAN batch needs n_critic × batch size images; got {len(x)} for n_critic {c.n_critic}")
        xs = x[:B * c.n_critic].view(c.n_critic, B, *x.shape[1:])  # (n_critic, B, 1, 28, 28)
        ys = y[:B * c.n_critic].view(c.n_critic, B)  # (n_critic, B)
        crit_params = list(self.critic.parameters())
        gen_params = list(self.generator.parameters())
        m: dict[str, float] = {}
        for i in range(c.n_critic):
            labels = ys[i] if c.num_classes else None  # fakes share the real batch's labels (x̂ stays in class)
            with torch.no_grad():
                fake = self.generator(randn_rows(self, B, c.latent, like=x), labels)
            d_loss, m = self.critic_loss(xs[i], fake, labels)
            m["d_grad_norm"] = trainer.clip_and_step("critic", d_loss, params=crit_params)
        # generator step; the critic is frozen so that no gradient is spent on its weights
        self.critic.requires_grad_(False)
        try:
            labels = ys[-1] if c.num_classes else None
            fake = self.generator(randn_rows(self, B, c.latent, like=x), labels)
            g_loss = self.generator_loss(xs[-1], fake, labels)
            m["g_grad_norm"] = trainer.clip_and_step("generator", g_loss, params=gen_params)
        finally:
            self.critic.requires_grad_(True)
        self.update_ema(self.row_shard.n if self.row_shard is not None else B)  # images of the global batch
        m.update(d_loss=d_loss.detach(), g_loss=g_loss.detach())
        # the Trainer stops on NaN in either (no host sync here: torch.where)
        loss = torch.where(torch.isfinite(g_loss), d_loss.detach(), g_loss.detach())
        return LossOutput(loss, m, n=B * c.n_critic)

    @torch.no_grad()
    def update_ema(self, batch_size: int) -> None:
        """ema ← β·ema + (1 − β)·G with β = 0.5^(B / h): a half-life of h images, where
        h = min(ema_kimg·1000, ema_rampup · images seen). The ramp-up keeps the average short early on, so it
        helps short runs too (a fixed β = 0.999 would average in the first, poor generators for a long time)."""
        c = self.config
        self.ema_images: torch.Tensor = self.ema_images + batch_size
        if c.ema_kimg <= 0:
            return
        ema_p, g_p = list(self.ema.parameters()), list(self.generator.parameters())
        if self.ema_images.device.type != "cpu":  # on an accelerator: tensor math, no host sync per step
            h = (self.ema_images * c.ema_rampup).clamp(max=c.ema_kimg * 1000.0) if c.ema_rampup else \
                torch.full_like(self.ema_images, c.ema_kimg * 1000.0)
            w = (1.0 - 0.5 ** (batch_size / h.clamp(min=1e-8))).to(ema_p[0].dtype)
            torch._foreach_lerp_(ema_p, g_p, [w] * len(ema_p))  # type: ignore[list-item]
        else:
            half_life = min(c.ema_kimg * 1000.0, c.ema_rampup * float(self.ema_images)) if c.ema_rampup else \
                c.ema_kimg * 1000.0
            beta = 0.5 ** (batch_size / max(half_life, 1e-8))
            torch._foreach_lerp_(ema_p, g_p, 1.0 - beta)  # ema + (1 − β)(G − ema)
        for b_e, b_g in zip(self.ema.buffers(), self.generator.buffers()):
            b_e.copy_(b_g)
