"""Test-set bounds for a VAE, in nats per image (BCE summed over the 784 pixels of [0, 1] images).

- negative ELBO:  -E_q[log p(x|z)] + KL(q(z|x) || p(z)), one z sample per image (the pytorch/examples
  convention), with a fixed seed so the number is reproducible.
- IWAE bound (Burda et al. 2016):  log p(x) ≥ log (1/k) Σ_i p(x, z_i) / q(z_i|x),  z_i ~ q(z|x);
  its negative is an upper bound on the NLL that tightens as k grows (k = 100 by default).
"""
from __future__ import annotations

import math

import torch

from genloom.data.batches import ImageBatches
from genloom.data.images import ImageData
from genloom.models.vae import VAE

LOG_2PI = math.log(2 * math.pi)


def _log_normal(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    # log N(z; μ, σ²) summed over dims = -½ Σ [log 2π + log σ² + (z-μ)²/σ²]
    return -0.5 * (LOG_2PI + logvar + (z - mu) ** 2 * torch.exp(-logvar)).sum(-1)


def _log_px(model: VAE, zk: torch.Tensor, labels: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """log p(x | z) for each of j samples per image: zk (j, B, latent), x (B, 784) → (j, B)."""
    j = len(zk)
    lab = labels.expand(j, -1).reshape(-1) if labels is not None else None
    xs = x.expand(j, -1, -1).reshape(-1, x.shape[-1])  # (j·B, 784)
    logits = model.decode_logits(zk.reshape(-1, zk.shape[-1]), lab, xs).reshape(j, len(x), -1)
    return model.log_px_given_z(logits, x)


@torch.inference_mode()
def evaluate_vae(model: VAE, data: ImageData, *, iwae_k: int = 100, batch_size: int = 500, seed: int = 0,
                 ) -> dict[str, float]:
    model.eval()
    g = torch.Generator().manual_seed(seed)
    dev = next(model.parameters()).device  # noise from the CPU generator: the same estimate on every device
    src = ImageBatches(data, batch_size, shuffle=False).to(dev)
    cond = model.config.num_classes > 0
    tot_nelbo = tot_iwae = tot_recon = tot_kl = 0.0
    for x, y in src.epoch():
        labels = y if cond else None
        x = x.reshape(len(x), -1)  # (B, 784)
        mu, logvar = model.encode(x, labels)
        std = torch.exp(0.5 * logvar)
        # negative ELBO with one sample
        z = mu + std * torch.randn(mu.shape, generator=g).to(dev)
        recon = -model.log_px_given_z(model.decode_logits(z, labels, x), x)  # (B,)
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(-1)  # (B,)
        tot_recon += float(recon.sum())
        tot_kl += float(kl.sum())
        tot_nelbo += float((recon + kl).sum())
        if iwae_k:
            eps = torch.randn((iwae_k, *mu.shape), generator=g).to(dev)  # (k, B, latent)
            zk = mu + std * eps
            # the k samples in chunks of rows: a pixel-head decoder holds (rows, 784, hidden) activations (~0.5 GB)
            rows = 8_000 if model.config.ar_kernel else 50_000
            step = max(1, min(iwae_k, rows // len(x)))
            log_px = torch.cat([_log_px(model, zk[i:i + step], labels, x) for i in range(0, iwae_k, step)])  # (k, B)
            log_pz = _log_normal(zk, torch.zeros_like(zk), torch.zeros_like(zk))  # (k, B)
            log_qz = _log_normal(zk, mu, logvar)  # (k, B)
            log_w = log_px + log_pz - log_qz
            tot_iwae += float(-(torch.logsumexp(log_w, 0) - math.log(iwae_k)).sum())
    n = len(data)
    out = {"nelbo": tot_nelbo / n, "recon": tot_recon / n, "kl": tot_kl / n, "n_images": n}
    if iwae_k:
        out["iwae_nll"] = tot_iwae / n
        out["iwae_k"] = iwae_k
    return out
