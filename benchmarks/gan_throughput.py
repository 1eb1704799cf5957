"""Generator steps per second of GAN configurations, measured side by side (interleaved rounds, medians).

    .venv/bin/python benchmarks/gan_throughput.py [--threads 2] [--rounds 5] [--steps 3]

Each round times ``--steps`` full training steps (n_critic critic steps + 1 generator step + EMA) of every
configuration in turn, on random images, so that machine load drifts hit all configurations alike.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from types import SimpleNamespace

import torch

from genloom.models.gan import GAN, GANConfig

CONFIGS: dict[str, tuple[GANConfig, int, float, tuple[float, float]]] = {
    # name: (model config, batch size, lr, betas)
    "gulrajani": (GANConfig(dim=64, kernel=5, n_critic=5, ema_kimg=0), 50, 1e-4, (0.5, 0.9)),
    "wgan-gp default": (GANConfig(dim=32, kernel=4, n_critic=5), 64, 2e-4, (0.5, 0.9)),
    "hinge default": (GANConfig(loss="hinge", dim=32, kernel=4, n_critic=2, gp_weight=0), 64, 2e-4, (0.5, 0.9)),
    "r3gan default": (GANConfig(loss="r3gan", dim=32, kernel=4, n_critic=1, gp_weight=0.1), 64, 2e-4, (0.0, 0.99)),
    "wgan-gp dim32 k3": (GANConfig(dim=32, kernel=3, n_critic=5), 64, 2e-4, (0.5, 0.9)),
    "wgan-gp mlp512": (GANConfig(arch="mlp", dim=512, n_critic=5), 64, 2e-4, (0.5, 0.9)),
    "hinge nc1": (GANConfig(loss="hinge", dim=32, kernel=4, n_critic=1, gp_weight=0), 64, 2e-4, (0.5, 0.9)),
}


class _Hooks:
    def __init__(self, opts: dict[str, torch.optim.Optimizer]) -> None:
        self.opts = opts

    def clip_and_step(self, name: str, loss: torch.Tensor, *, params=None) -> float:
        self.opts[name].zero_grad(set_to_none=True)
        loss.backward()
        self.opts[name].step()
        return math.nan


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--only", nargs="*", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    setups = {}
    for name, (cfg, bs, lr, betas) in CONFIGS.items():
        if a.only and name not in a.only:
            continue
        m = GAN(cfg)
        opts = m.configure_optimizers(SimpleNamespace(lr=lr, betas=betas, weight_decay=0.0))
        batch = (torch.rand(bs * cfg.n_critic, 1, 28, 28), torch.randint(0, 10, (bs * cfg.n_critic,)))
        m.train_step(batch, opts, 0, _Hooks(opts))  # warm-up
        setups[name] = (m, opts, batch, bs * cfg.n_critic)
    times: dict[str, list[float]] = {k: [] for k in setups}
    for _ in range(a.rounds):
        for name, (m, opts, batch, _) in setups.items():
            t = time.perf_counter()
            for s in range(a.steps):
                m.train_step(batch, opts, s, _Hooks(opts))
            times[name].append((time.perf_counter() - t) / a.steps)
    base = statistics.median(times["gulrajani"]) if "gulrajani" in times else None
    for name, ts in times.items():
        med = statistics.median(ts)
        print(json.dumps({"config": name, "s_per_gen_step": round(med, 4), "gen_steps_per_s": round(1 / med, 2),
                          "real_images_per_s": round(setups[name][3] / med), "min": round(min(ts), 4),
                          "max": round(max(ts), 4),
                          "speedup_vs_gulrajani": round(base / med, 2) if base else None}))


if __name__ == "__main__":
    main()
