"""Where the flow model's sampling time goes: 64 images, DiT vs decoder vs everything else, against the GAN.

    python benchmarks/flow_profile.py --threads 1 --rounds 7

Random-weight models of the default architectures (speed does not depend on the weights), the GAN through
``genloom.engine.load`` (its default backend, as ``genloom bench``) and also as plain eager fp32. Each round times
every item once, interleaved; medians over the rounds. The "other" column is the engine's sample time minus its
network evaluations and decoder: Python per step, noise, guidance arithmetic, copies.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time
from typing import Any, Callable

import torch

from genloom import export
from genloom.engine import load
from genloom.models.flow import FlowConfig, FlowModel, guidance_at, network_evaluations, time_grid
from genloom.models.gan import GAN, GANConfig
from genloom.recipes.gan import DEFAULT_LOSS, LOSS_DEFAULTS


def rows_per_sample(c: FlowConfig, steps: int, sampler: str, guidance: float) -> int:
    """Batch rows of network evaluation per sample: 2 where guidance is on (w ∉ {0, 1}), else 1."""
    ts = [float(t) for t in time_grid(steps, shift=c.time_shift)]
    evals = [t for i in range(steps) for t in ([ts[i], ts[i + 1]] if sampler == "heun" else [ts[i]])]
    ws = [guidance_at(t, guidance, (c.guidance_t_min, c.guidance_t_max)) for t in evals]
    return sum(1 if w in (0.0, 1.0) else 2 for w in ws)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--n", type=int, default=64)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    n = a.n
    tmp = tempfile.mkdtemp()
    torch.manual_seed(0)
    gan_model = GAN(GANConfig(loss=DEFAULT_LOSS, **LOSS_DEFAULTS[DEFAULT_LOSS][1]))
    gan = load(export.save(gan_model, os.path.join(tmp, "gan.safetensors")))
    cfg = FlowConfig()
    teacher = load(export.save(FlowModel(cfg), os.path.join(tmp, "flow.safetensors")))
    scfg = dataclasses.replace(cfg, sampler="euler", sample_steps=2, guidance=1.0, distill_guidance=cfg.guidance)
    student = load(export.save(FlowModel(scfg), os.path.join(tmp, "student.safetensors")))
    fm: Any = teacher.model  # type: ignore[attr-defined]
    gen = export.load(os.path.join(tmp, "gan.safetensors")).eval()
    x = torch.randn(2 * n, *cfg.latent_shape)
    t = torch.rand(2 * n)
    y = torch.randint(0, 11, (2 * n,))
    z = torch.randn(n, gen.config.latent)
    items: dict[str, Callable[[], Any]] = {
        "gan engine (default backend)": lambda: gan.sample(n, seed=0),
        "gan generator, eager fp32": lambda: gen.generator(z),
        f"DiT, {n} rows": lambda: fm.ema(x[:n], t[:n], y[:n]),
        f"DiT, {2 * n} rows": lambda: fm.ema(x, t, y),
        f"decoder, {n} latents": lambda: fm.decode(x[:n]),
        f"flow default ({cfg.sampler} {cfg.sample_steps}, w = {cfg.guidance:g} on t ≤ {cfg.guidance_t_max:g})":
            lambda: teacher.sample(n, seed=0),
        f"flow {cfg.sampler} {cfg.sample_steps}, w = {cfg.guidance:g} on all t":
            lambda: fm.decode(fm.sample_latents(torch.randn(n, *cfg.latent_shape), guidance_interval=(0.0, 1.0))),
        "reflow student euler 2 (w = 1)": lambda: student.sample(n, seed=0),
        "reflow student euler 1 (w = 1)": lambda: student.sample(n, seed=0, steps=1),
    }
    times: dict[str, list[float]] = {k: [] for k in items}
    with torch.inference_mode():
        for f in items.values():
            f()
        for _ in range(a.rounds):
            for k, f in items.items():
                t0 = time.perf_counter()
                f()
                times[k].append(1000 * (time.perf_counter() - t0))
    med = {k: statistics.median(v) for k, v in times.items()}
    dit1, dit2, dec = med[f"DiT, {n} rows"], med[f"DiT, {2 * n} rows"], med[f"decoder, {n} latents"]
    per_row = (dit2 - dit1) / n  # the marginal cost of a row
    out: dict[str, Any] = {"load_avg": os.getloadavg()[0], "threads": a.threads, "n": n, "ms": med,
                           "vs_gan": {k: v / med["gan engine (default backend)"] for k, v in med.items()}}
    totals = {"default": med[f"flow default ({cfg.sampler} {cfg.sample_steps}, w = {cfg.guidance:g} on t ≤ "
                                f"{cfg.guidance_t_max:g})"],
              "all t": med[f"flow {cfg.sampler} {cfg.sample_steps}, w = {cfg.guidance:g} on all t"],
              "student 2": med["reflow student euler 2 (w = 1)"], "student 1": med["reflow student euler 1 (w = 1)"]}
    breakdown = {}
    for k, c, steps, sampler, w in (
            ("default", cfg, cfg.sample_steps, cfg.sampler, cfg.guidance),
            ("all t", dataclasses.replace(cfg, guidance_t_min=0.0, guidance_t_max=1.0), cfg.sample_steps, cfg.sampler,
             cfg.guidance),
            ("student 2", scfg, 2, "euler", 1.0), ("student 1", scfg, 1, "euler", 1.0)):
        rows = rows_per_sample(c, steps, sampler, w)
        evals = network_evaluations(steps, sampler)
        guided = rows - evals
        dit_ms = (evals - guided) * dit1 + guided * dit2
        breakdown[k] = {"evaluations": evals, "rows_per_sample": rows, "total_ms": round(totals[k], 1),
                        "dit_ms": round(dit_ms, 1), "decoder_ms": round(dec, 1),
                        "other_ms": round(totals[k] - dit_ms - dec, 1)}
    out["breakdown"] = breakdown
    out["dit_ms_per_row"] = round(per_row, 3)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
