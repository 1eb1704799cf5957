"""Engines for image models: the VAE (sample, decode, encode, reconstruct, interpolate) and the GAN (sample).

Each call takes and returns numpy: images are float32 (n, 28, 28) in [0, 1]. Noise comes from numpy's PCG64
(``base.noise``), so a seed gives the same images on every backend, torch or not.
"""
from __future__ import annotations

from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from torch import nn

from genloom.engine import autotune, backends
from genloom.engine.base import (IMAGE_HW, Engine, check_images, check_labels, check_latent,
                                 check_seed, check_steps, noise, onehot, sample_inputs, slerp)
from genloom.errors import ConfigError
from genloom.export import ModelFile

ZOrSeed = int | Sequence[float] | np.ndarray


class _Generator(nn.Module):
    """A GAN generator taking z ⊕ onehot(label) as one input: (n, latent + C) → (n, 784) in [0, 1].
    (The one-hot is made by the engine, so every backend sees one plain float input.)"""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self.net, "fc"):  # conv generator: ConvGenerator.forward after the one-hot (models/gan_nets.py)
            g = self.net  # bn0..bn2: batch norm with running statistics (eval mode), or Identity
            h = torch.relu(g.bn0(g.fc(x).view(-1, 4 * g.dim, 4, 4)))  # (n, 4D, 4, 4)
            h = torch.relu(g.bn1(g.up1(h)[:, :, :7, :7]))  # (n, 2D, 8, 8) cropped to (n, 2D, 7, 7)
            h = torch.relu(g.bn2(g.up2(h)))  # (n, D, 14, 14)
            return torch.sigmoid(g.up3(h)).flatten(1)  # (n, 784)
        return torch.sigmoid(self.net.net(x))  # MLP generator, (n, 784)


class _PixelDecoder(nn.Module):
    """A VAE with a pixel head as one function of z ⊕ onehot(label): (n, latent + C) → (n, 784) in [0, 1], decoded
    pixel by pixel (``VAE._pixel_sample``)."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae._pixel_sample(self.vae.decoder(x))


class VAEEngine(Engine):
    kind: ClassVar[str] = "vae"

    def __init__(self, model: nn.Module, header: ModelFile, *, backend: str = "eager",
                 threads: int | None = None, cache_key: str | None = None) -> None:
        self.model = model.eval()
        self.header = header
        c = model.config
        self.latent, self.num_classes, self.x_dim = int(c.latent), int(c.num_classes), int(c.x_dim)
        # the decoder with its output nonlinearity: (n, latent + C) → (n, 784) Bernoulli means in [0, 1]
        self.decoder = (_PixelDecoder(model) if c.ar_kernel else nn.Sequential(model.decoder, nn.Sigmoid())).eval()
        if c.ar_kernel:  # 784 sequential head steps: eager only (no graph export or fused kernel for the loop)
            if backend not in ("auto", "exact", "eager"):
                raise ConfigError(f"backend {backend!r}: this VAE has an autoregressive pixel head, which runs on "
                                  f"the eager backend only; pass backend='eager' (or 'auto')")
            backend = "eager"
        self.backend, self._decode, self.auto = autotune.select(
            backend, self.decoder, self.latent, num_classes=self.num_classes, threads=threads, cache_key=cache_key)

    # -- calls --------------------------------------------------------------------------------------------
    def sample(self, n: int, *, seed: int | None = None, labels: Sequence[int] | None = None) -> np.ndarray:
        """n images from the prior p(z) = N(0, I), decoded to Bernoulli means: (n, 28, 28) in [0, 1]."""
        return self._run_decoder(*sample_inputs(self, n, seed, labels))

    def decode(self, z: Any, *, labels: Sequence[int] | None = None) -> np.ndarray:
        """Latent codes (n, latent) → images (n, 28, 28)."""
        z = check_latent(z, self.latent)
        return self._run_decoder(z, check_labels(labels, len(z), self.num_classes))

    def encode(self, x: Any, *, labels: Sequence[int] | None = None) -> np.ndarray:
        """Images (n, 28, 28) in [0, 1] → posterior means μ(x): (n, latent)."""
        flat = check_images(x, x_dim=self.x_dim)
        y = check_labels(labels, len(flat), self.num_classes)
        with torch.inference_mode():
            p = next(self.model.parameters())  # the model's device and type (engine.load's device, precision)
            lab = None if y is None else torch.from_numpy(y).to(p.device)
            mu, _ = self.model.encode(torch.from_numpy(flat).to(p.device, p.dtype), lab)
        return mu.float().cpu().numpy()

    def reconstruct(self, x: Any, *, labels: Sequence[int] | None = None) -> np.ndarray:
        """decode(encode(x)): the images as the model sees them, (n, 28, 28)."""
        z = self.encode(x, labels=labels)
        return self.decode(z, labels=labels)

    def interpolate(self, a: ZOrSeed, b: ZOrSeed, *, steps: int = 8, label: int | None = None) -> np.ndarray:
        """Images along the slerp path between two latent codes (or seeds, drawing z from the prior)."""
        steps = check_steps(steps)
        za, zb = self._z_or_seed(a, "a"), self._z_or_seed(b, "b")
        labels = None if label is None else [label]
        return self.decode(slerp(za, zb, steps), labels=labels)

    # -- pieces -------------------------------------------------------------------------------------------
    def _z_or_seed(self, v: ZOrSeed, field: str) -> np.ndarray:
        if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            return noise(check_seed(v), 1, self.latent)[0]
        return check_latent(v, self.latent, field=field, max_n=1)[0]

    def _run_decoder(self, z: np.ndarray, y: np.ndarray | None) -> np.ndarray:
        if y is not None:
            z = np.concatenate([z, onehot(y, self.num_classes)], axis=1)  # (n, latent + C)
        out = self._decode(np.ascontiguousarray(z, dtype=np.float32))
        return backends.in_range(out, self.backend).reshape(len(z), *IMAGE_HW)  # (n, 28, 28)


class GANEngine(Engine):
    """Samples from a GAN's generator (the EMA copy when the file says to sample from it)."""

    kind: ClassVar[str] = "gan"

    def __init__(self, model: nn.Module, header: ModelFile, *, backend: str = "eager",
                 threads: int | None = None, cache_key: str | None = None) -> None:
        self.model = model.eval()
        self.header = header
        c = model.config
        self.latent, self.num_classes, self.arch = int(c.latent), int(c.num_classes), str(c.arch)
        net = model.ema if bool(model.sample_from_ema) else model.generator
        # an MLP generator as a plain Sequential (the same function): the MLP-only backends (mixed) can run it
        self.generator = (nn.Sequential(net.net, nn.Sigmoid()) if self.arch == "mlp" else _Generator(net)).eval()
        self.backend, self._generate, self.auto = autotune.select(
            backend, self.generator, self.latent, num_classes=self.num_classes, threads=threads,
            cache_key=cache_key)

    def sample(self, n: int, *, seed: int | None = None, labels: Sequence[int] | None = None) -> np.ndarray:
        """n images G(z), z ~ N(0, I): (n, 28, 28) in [0, 1]. A conditional model without labels cycles classes."""
        return self._run(*sample_inputs(self, n, seed, labels))

    def decode(self, z: Any, *, labels: Sequence[int] | None = None) -> np.ndarray:
        """G(z) for given latent codes (n, latent): lets a server draw each request's noise and batch them."""
        z = check_latent(z, self.latent)
        return self._run(z, check_labels(labels, len(z), self.num_classes))

    def _run(self, z: np.ndarray, y: np.ndarray | None) -> np.ndarray:
        if y is not None:
            z = np.concatenate([z, onehot(y, self.num_classes)], axis=1)  # (n, latent + C)
        out = self._generate(np.ascontiguousarray(z, dtype=np.float32))
        return backends.in_range(out, self.backend).reshape(len(z), *IMAGE_HW)  # (n, 28, 28)
