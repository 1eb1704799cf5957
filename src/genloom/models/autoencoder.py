"""Convolutional KL autoencoder with a spatial latent, trained with a patch critic (the first stage of ``flow``).

    encoder  x (B, 1, 28, 28) → conv 4×4/2 D @14 → conv 3×3 D → conv 4×4/2 2D @7 → conv 3×3 2D → conv 3×3
             → (μ, log σ²) each (B, C, 7, 7)
    decoder  z (B, C, 7, 7) → conv 3×3 2D ×2 @7 → ConvT 4×4/2 D @14 → conv 3×3 D → ConvT 4×4/2 D/2 @28
             → conv 3×3 → logits (B, 1, 28, 28); images are sigmoid(logits) in [0, 1]

Objective per image (Esser et al. 2021 "taming transformers"; Rombach et al. 2022 LDM's KL-f4 autoencoder):
    L = BCE(x̂, x) summed over pixels + kl_weight·KL(q(z|x) ‖ N(0, I)) + adv_weight·(−E D(x̂))
The reconstruction and the KL are the VAE's (``models/vae.py``: Bernoulli likelihood, the same closed-form KL);
the critic is a spectral-normalised fully convolutional *patch* critic that scores every 7×7 location, trained
with the hinge loss of ``models/gan.py`` (each patch logit counts as one sample). The adversarial term starts
after ``adv_start`` steps, when reconstructions are already close, so the critic only sharpens details.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from genloom.models.base import GenerativeModel, LossOutput, TrainerHooks
from genloom.models.gan import hinge_critic_loss


@dataclass(frozen=True)
class AutoencoderConfig:
    channels: int = 4  # C: the latent is (C, 7, 7)
    dim: int = 32  # D: channels of the first conv layer (2D in the 14×14 and 7×7 layers)
    critic_dim: int = 32  # channels of the patch critic's first layer
    kl_weight: float = 1e-3  # small: keeps the latent near N(0, I) in scale without blurring the images
    adv_weight: float = 0.5  # weight of the generator's hinge term −E D(x̂) (per patch mean, per image)
    adv_start: int = 400  # steps of reconstruction + KL only, before the critic joins
    image_shape: tuple[int, ...] = (1, 28, 28)

    def __post_init__(self) -> None:
        if min(self.channels, self.dim // 2, self.critic_dim) < 1:
            raise ValueError("channels and critic_dim must be ≥ 1, dim ≥ 2")
        if self.kl_weight < 0 or self.adv_weight < 0 or self.adv_start < 0:
            raise ValueError("kl_weight, adv_weight and adv_start must be ≥ 0")
        if tuple(self.image_shape) != (1, 28, 28):
            raise ValueError("the autoencoder is built for (1, 28, 28) images")

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.channels, 7, 7)


class Encoder(nn.Module):
    def __init__(self, c: AutoencoderConfig) -> None:
        super().__init__()
        d = c.dim
        self.net = nn.Sequential(
            nn.Conv2d(1, d, 4, 2, 1), nn.SiLU(),  # (B, D, 14, 14)
            nn.Conv2d(d, d, 3, 1, 1), nn.SiLU(),  # (B, D, 14, 14)
            nn.Conv2d(d, 2 * d, 4, 2, 1), nn.SiLU(),  # (B, 2D, 7, 7)
            nn.Conv2d(2 * d, 2 * d, 3, 1, 1), nn.SiLU(),  # (B, 2D, 7, 7)
            nn.Conv2d(2 * d, 2 * c.channels, 3, 1, 1),  # (B, 2C, 7, 7): μ and log σ²
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.net(x).chunk(2, dim=1)  # each (B, C, 7, 7)
        return mu, logvar.clamp(-30.0, 20.0)


class Decoder(nn.Module):
    """Narrow at full resolution (D/2 channels at 28×28): sampling cost is dominated by the last layers."""

    def __init__(self, c: AutoencoderConfig) -> None:
        super().__init__()
        d = c.dim
        self.net = nn.Sequential(
            nn.Conv2d(c.channels, 2 * d, 3, 1, 1), nn.SiLU(),  # (B, 2D, 7, 7)
            nn.Conv2d(2 * d, 2 * d, 3, 1, 1), nn.SiLU(),  # (B, 2D, 7, 7)
            nn.ConvTranspose2d(2 * d, d, 4, 2, 1), nn.SiLU(),  # (B, D, 14, 14)
            nn.Conv2d(d, d, 3, 1, 1), nn.SiLU(),  # (B, D, 14, 14)
            nn.ConvTranspose2d(d, d // 2, 4, 2, 1), nn.SiLU(),  # (B, D/2, 28, 28)
            nn.Conv2d(d // 2, 1, 3, 1, 1),  # (B, 1, 28, 28) logits
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)  # logits


class PatchCritic(nn.Module):
    """Fully convolutional, spectral-normalised (Miyato et al. 2018): one logit per 7×7 location of the image."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            spectral_norm(nn.Conv2d(1, dim, 4, 2, 1)), nn.LeakyReLU(0.2),  # (B, D, 14, 14)
            spectral_norm(nn.Conv2d(dim, 2 * dim, 4, 2, 1)), nn.LeakyReLU(0.2),  # (B, 2D, 7, 7)
            spectral_norm(nn.Conv2d(2 * dim, 1, 3, 1, 1)),  # (B, 1, 7, 7)
        )

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x).flatten(1)  # (B, 49): the GAN losses treat each patch as a sample


class Autoencoder(GenerativeModel):
    """kind "autoencoder". ``encode`` → (μ, log σ²) of q(z|x); ``decode`` → images in [0, 1]."""

    kind: ClassVar[str] = "autoencoder"
    config_class: ClassVar[type] = AutoencoderConfig
    progress_metrics: ClassVar[tuple[str, ...]] = ("recon", "kl", "d_loss")

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        self.config = c = config
        self.encoder = Encoder(c)
        self.decoder = Decoder(c)
        self.critic = PatchCritic(c.critic_dim)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x.reshape(len(x), 1, 28, 28))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(z))  # (B, 1, 28, 28) in [0, 1]

    def _recon_kl(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)  # (B, C, 7, 7) each
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)  # reparameterization z = μ + σ ⊙ ε
        logits = self.decoder(z)  # (B, 1, 28, 28)
        # −log p(x|z) under the VAE's Bernoulli likelihood, summed over pixels: (B,)
        recon = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
        # KL(q(z|x) ‖ N(0, I)) = −½ Σ (1 + log σ² − μ² − σ²), as in models/vae.py: (B,)
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).flatten(1).sum(1)
        return recon, kl, logits

    def loss(self, batch: Any) -> LossOutput:
        x, _ = batch
        recon, kl, _ = self._recon_kl(x)
        loss = (recon + self.config.kl_weight * kl).mean()
        return LossOutput(loss.detach(), {"recon": float(recon.mean()), "kl": float(kl.mean())}, n=len(x))

    @torch.no_grad()
    def generate(self, n: int, *, generator: torch.Generator | None = None, **kw: Any) -> torch.Tensor:
        """Decoded prior draws z ~ N(0, I) (a rough check only: the flow model is what samples this latent)."""
        z = torch.randn(n, *self.config.latent_shape, generator=generator)
        return self.decode(z)

    # -- training -------------------------------------------------------------------------------------------
    def configure_optimizers(self, tcfg: Any) -> dict[str, torch.optim.Optimizer]:
        """Adam for the autoencoder; Adam with β₁ = 0.5 for the critic (the GAN family's choice)."""
        ae = list(self.encoder.parameters()) + list(self.decoder.parameters())
        return {"ae": torch.optim.Adam(ae, lr=tcfg.lr, betas=tuple(tcfg.betas), fused=True),
                "critic": torch.optim.Adam(self.critic.parameters(), lr=tcfg.lr, betas=(0.5, 0.9), fused=True)}

    def train_step(self, batch: Any, optimizers: dict[str, torch.optim.Optimizer], step: int,
                   trainer: TrainerHooks) -> LossOutput:
        c = self.config
        x, _ = batch
        recon, kl, logits = self._recon_kl(x)
        loss = (recon + c.kl_weight * kl).mean()
        m: dict[str, float] = {"recon": float(recon.detach().mean()), "kl": float(kl.detach().mean())}
        adversarial = c.adv_weight > 0 and step >= c.adv_start
        if adversarial:
            fake = torch.sigmoid(logits)
            self.critic.requires_grad_(False)
            try:
                g_adv = -self.critic(fake).mean()  # hinge generator loss −E D(x̂), over images and patches
            finally:
                self.critic.requires_grad_(True)
            loss = loss + c.adv_weight * g_adv
            m["g_adv"] = float(g_adv.detach())
        m["grad_norm"] = trainer.clip_and_step("ae", loss)
        if adversarial:
            d_loss, dm = hinge_critic_loss(self.critic, x, fake.detach(), None)
            trainer.clip_and_step("critic", d_loss)
            m.update(d_loss=float(d_loss.detach()), d_gap=dm["w_dist"])
        return LossOutput(loss.detach(), m, n=len(x))
