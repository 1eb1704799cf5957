"""Engine for the latent flow model: sample (with steps, guidance, sampler), decode latents, and the denoising
trajectory (what the playground shows).

Noise is numpy's PCG64 (``base.noise``), like the other image engines: a seed gives the same images whatever the
batch it is part of. Images are float32 (n, 28, 28) in [0, 1].
"""
from __future__ import annotations

from typing import Any, ClassVar, Sequence, cast

import numpy as np
import torch
from torch import nn

from genloom.engine import autotune, backends
from genloom.engine.base import (IMAGE_HW, Engine, InputError, check_labels, check_n, check_request, check_seed,
                                 noise)
from genloom.export import ModelFile
from genloom.models.flow import SAMPLERS, check_sampler, network_evaluations


def _sampling(p: dict[str, Any], sampler: Any, config: Any) -> tuple[int, float, str]:
    """(steps, guidance, sampler) of a validated request, each defaulting to the file's sampler settings."""
    steps = config.sample_steps if p.get("steps") is None else int(p["steps"])
    guidance = config.guidance if p.get("guidance") is None else float(p["guidance"])
    sampler = config.sampler if sampler is None else sampler
    if sampler not in SAMPLERS:
        raise InputError("sampler", f"must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    try:
        check_sampler(config, sampler, steps)
    except ValueError as e:
        raise InputError("sampler", str(e)) from None
    return steps, guidance, str(sampler)


class _Denormalize(nn.Module):
    """Flat normalised latents (n, C·H·W) → the decoder's input (n, C, H, W): z·std + mean per channel."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = shape
        self.register_buffer("mean", mean.detach().float().reshape(-1, 1, 1))
        self.register_buffer("std", std.detach().float().reshape(-1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, *self.shape) * self.std + self.mean


def image_decoder(model: nn.Module) -> nn.Sequential:
    """``FlowModel.decode`` as one feed-forward module of a flat float input, ending in Sigmoid:
    (n, C·7·7) normalised latents → (n, 784) in [0, 1], so the image backends and ``auto`` can run it."""
    c = model.config
    net = cast(nn.Sequential, model.decoder.net)  # models/autoencoder.py's Decoder
    return nn.Sequential(_Denormalize(model.latent_mean, model.latent_std, tuple(c.latent_shape)),
                         *net, nn.Flatten(1), nn.Sigmoid()).eval()


class FlowEngine(Engine):
    """The DiT runs fp32 eager (an ODE loop: its errors would compound over the steps); the decoder, a plain
    conv net, runs on the image backends like the GAN generator — ``auto`` picks the fastest whose 8-bit
    pictures agree with fp32 within one grey level (``engine/autotune.py``)."""

    kind: ClassVar[str] = "flow"
    max_batch: int = 64

    def __init__(self, model: nn.Module, header: ModelFile, *, backend: str = "eager",
                 threads: int | None = None, cache_key: str | None = None) -> None:
        self.model = model.eval()
        self.header = header
        self.config = c = model.config
        self.num_classes = int(c.num_classes)
        self.latent_shape = tuple(c.latent_shape)
        # not ``latent``: the batch runner would decode noise directly; a flow sample is an ODE solve per request
        self.latent_dim = int(np.prod(self.latent_shape))
        self.decoder = image_decoder(model)
        self.backend, self._decode, self.auto = autotune.select(
            backend, self.decoder, self.latent_dim, threads=threads, cache_key=cache_key)

    def describe(self) -> dict[str, Any]:
        c = self.config
        return {**super().describe(), "sampler": c.sampler, "steps": c.sample_steps, "guidance": c.guidance,
                "guidance_interval": [c.guidance_t_min, c.guidance_t_max], "distill_guidance": c.distill_guidance,
                "shortcut_levels": c.shortcut_levels, "adversarial_steps": c.adv_steps,
                "latent_shape": list(self.latent_shape), "num_classes": self.num_classes}

    def _noise(self, seed: int | None, n: int) -> torch.Tensor:
        z = noise(check_seed(seed), n, self.latent_dim)  # (n, C·7·7)
        return torch.from_numpy(z).reshape(n, *self.latent_shape)  # (n, C, 7, 7)

    def _labels(self, labels: Sequence[int] | None, n: int) -> torch.Tensor | None:
        y = check_labels(labels, n, self.num_classes)
        return None if y is None else torch.from_numpy(y)

    def _check(self, op: str, n: Any, seed: Any, labels: Any, steps: Any, guidance: Any, sampler: Any
               ) -> tuple[int, int, torch.Tensor | None, int, float, str]:
        p = check_request(self, op, n=n, seed=seed, labels=labels, steps=steps, guidance=guidance)
        steps, guidance, sampler = _sampling(p, sampler, self.config)
        n = p["n"]
        return n, check_seed(p["seed"]), self._labels(p["labels"], n), steps, guidance, sampler

    def sample(self, n: int, *, seed: int | None = None, labels: Sequence[int] | None = None,
               steps: int | None = None, guidance: float | None = None, sampler: str | None = None) -> np.ndarray:
        """n images: integrate the flow ODE from noise (t = 1) to a latent (t = 0) and decode it."""
        n, seed, y, steps, guidance, sampler = self._check("sample", n, seed, labels, steps, guidance, sampler)
        z1 = self._noise(seed, n)
        with torch.inference_mode():
            z0 = self.model.sample_latents(z1, labels=y, steps=steps, guidance=guidance, sampler=sampler)
        return self._images(z0)

    def trajectory(self, n: int = 1, *, seed: int | None = None, labels: Sequence[int] | None = None,
                   steps: int | None = None, guidance: float | None = None, sampler: str | None = None
                   ) -> dict[str, Any]:
        """The denoising path: at each step t_i, the decoded state x_{t_i} and the decoded prediction of the data
        x̂₀ = x_t − t·v (where the straight line through x_t with velocity v meets t = 0), then the final images.
        Returns {"t": [steps floats], "states": (steps, n, 28, 28), "predictions": (steps, n, 28, 28),
        "images": (n, 28, 28), "network_evaluations": int}."""
        n, seed, y, steps, guidance, sampler = self._check("trajectory", n, seed, labels, steps, guidance, sampler)
        z1 = self._noise(seed, n)
        ts: list[float] = []
        states, preds = [], []

        def on_step(i: int, t: torch.Tensor, x: torch.Tensor, v: torch.Tensor) -> None:
            ts.append(float(t))
            states.append(x.clone())
            preds.append(x - t * v)  # x̂₀ = x_t − t·v

        with torch.inference_mode():
            z0 = self.model.sample_latents(z1, labels=y, steps=steps, guidance=guidance, sampler=sampler,
                                           on_step=on_step)
        imgs = self._images(torch.cat([*states, *preds, z0]))  # one decoder batch for all of it
        imgs = imgs.reshape(2 * steps + 1, n, *IMAGE_HW)
        return {"t": ts, "states": imgs[:steps], "predictions": imgs[steps:2 * steps], "images": imgs[-1],
                "network_evaluations": network_evaluations(steps, sampler)}

    def trajectory_grid(self, n: int = 1, **kw: Any) -> np.ndarray:
        """``trajectory`` as one image array for transports: per sample, a row of states x_t then a row of
        predictions x̂₀, each ending with the final image — (n·2·(steps + 1), 28, 28), rows of steps + 1."""
        tr = self.trajectory(n, **kw)
        last = tr["images"][None]  # (1, n, 28, 28)
        rows = np.stack([np.concatenate([tr["states"], last]), np.concatenate([tr["predictions"], last])])
        return np.ascontiguousarray(rows.transpose(2, 0, 1, 3, 4).reshape(-1, *IMAGE_HW))  # (n·2·(S+1), 28, 28)

    def decode_latents(self, z: Any) -> np.ndarray:
        """Normalised latents (n, C·7·7) or (n, C, 7, 7) → images, without sampling."""
        d = self.latent_dim
        try:
            arr = np.asarray(z, dtype=np.float32)
        except (TypeError, ValueError):
            raise InputError("z", f"must be a float array of shape (n, {d})") from None
        if arr.ndim < 1 or arr.size % d or not np.isfinite(arr).all():
            raise InputError("z", f"must be finite with shape (n, {d}) or (n, {', '.join(map(str, self.latent_shape))})")
        t = torch.from_numpy(arr.reshape(-1, *self.latent_shape))
        check_n(len(t), field="len(z)")
        return self._images(t)

    def _images(self, z: torch.Tensor) -> np.ndarray:
        """Normalised latents (n, C, 7, 7) → images (n, 28, 28) in [0, 1] through the decoder's backend."""
        out = self._decode(np.ascontiguousarray(z.float().reshape(len(z), -1).numpy()))
        return backends.in_range(out, self.backend).reshape(len(z), *IMAGE_HW)  # (n, 28, 28)
