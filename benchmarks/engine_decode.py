"""VAE decode of 100 latents: ``genloom.engine.load(path).decode(z)`` (backend="auto") vs a plain fp32 eager
``nn.Sequential`` MLP of the same shape and weights, side by side in one process.

    .venv/bin/python benchmarks/engine_decode.py [--threads 1] [--rounds 15] [--calls 20] [--json]
        [--model PATH ...]   # default: train the lecture VAE (20→400→784) and lecture-large (20→400→800→784)
                             # for one epoch on Fashion-MNIST, so that auto's agreement check sees trained weights

For each model: load with backend="auto" in a fresh choice cache (so the choice is measured here, now — printed
with its report: grey levels and time vs eager per candidate), then time, in alternating chunks of ``calls``
calls per variant and ``rounds`` rounds (medians of the per-call time in each chunk):
- ``naive train``: the nn.Sequential in training mode with autograd on (what a first PyTorch script does),
- ``naive eval``: the same in eval mode under ``torch.no_grad()``,
- ``engine auto``: ``load(path).decode(z)`` — numpy in, numpy out, the backend auto chose,
- ``engine exact``: ``load(path, backend="exact").decode(z)`` (fp32 eager).
The ratio is variant / naive train (the issue's baseline); the target is engine auto ≤ 0.5x.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn


def plain_mlp(decoder: nn.Module) -> nn.Sequential:
    """An nn.Sequential with the decoder's Linear layers (weights copied) and activations, ending in Sigmoid."""
    layers: list[nn.Module] = []
    for m in decoder.modules():
        if isinstance(m, nn.Linear):
            lin = nn.Linear(m.in_features, m.out_features)
            lin.load_state_dict(m.state_dict())
            layers.append(lin)
        elif isinstance(m, (nn.ReLU, nn.SiLU, nn.GELU, nn.Tanh, nn.LeakyReLU)):
            layers.append(type(m)())
    return nn.Sequential(*layers, nn.Sigmoid())


def timed(variants: dict[str, Callable[[], Any]], *, rounds: int, calls: int) -> dict[str, float]:
    """Median over rounds of the mean per-call seconds in a chunk; variants take turns every chunk."""
    for fn in variants.values():  # warm up
        for _ in range(5):
            fn()
    per: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            t = time.perf_counter()
            for _ in range(calls):
                fn()
            per[name].append((time.perf_counter() - t) / calls)
    return {k: statistics.median(v) for k, v in per.items()}


def measure(path: Path, *, rounds: int, calls: int) -> dict[str, Any]:
    from genloom import export
    from genloom.engine import load

    auto = load(path)
    exact = load(path, backend="exact")
    vae = export.load(path)
    naive = plain_mlp(vae.decoder)
    naive.train()
    naive_eval = plain_mlp(vae.decoder).eval()
    z = np.random.default_rng(0).standard_normal((100, vae.config.latent), dtype=np.float32)
    zt = torch.from_numpy(z)
    ref = exact.decode(z).reshape(100, -1)
    with torch.no_grad():
        assert float(np.abs(naive_eval(zt).numpy() - ref).max()) < 1e-5, "the plain MLP is not the same function"

    def naive_eval_call() -> Any:
        with torch.no_grad():
            return naive_eval(zt)

    t = timed({"naive train": lambda: naive(zt), "naive eval": naive_eval_call,
               "engine auto": lambda: auto.decode(z), "engine exact": lambda: exact.decode(z)},
              rounds=rounds, calls=calls)
    shape = "→".join(str(d) for d in [vae.config.latent, *vae.config.dec_hidden, 784])
    grey = int(np.abs(np.rint(auto.decode(z) * 255) - np.rint(exact.decode(z) * 255)).max())
    return {"decoder": shape, "auto_backend": auto.backend, "auto_report": auto.auto,
            "grey_levels_vs_exact": grey,
            "ms": {k: round(v * 1e3, 4) for k, v in t.items()},
            "vs_naive_train": {k: round(v / t["naive train"], 3) for k, v in t.items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, action="append", default=None, help="VAE file(s) (default: train two)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["GENLOOM_ENGINE_CACHE"] = tempfile.mkdtemp(prefix="genloom-engine-cache-")  # measure auto now
    models = args.model
    if not models:
        import genloom

        tmp = Path(tempfile.mkdtemp(prefix="genloom-bench-"))
        models = [Path(genloom.train("vae", out=tmp / name, epochs=1, dec_hidden=dec, threads=args.threads)["model"])
                  for name, dec in (("lecture", "400"), ("lecture-large", "400,800"))]
    from genloom.engine.autotune import cpu_id

    results = {"cpu": cpu_id(), "threads": args.threads, "torch": torch.__version__,
               "load_average": os.getloadavg()[0], "models": [measure(p, rounds=args.rounds, calls=args.calls)
                                                              for p in models]}
    if args.json:
        print(json.dumps(results))
        return 0
    print(f"cpu: {results['cpu']}\nthreads {args.threads}, torch {results['torch']}, "
          f"load average {results['load_average']:.1f}")
    print("| decoder (batch 100) | auto chose | naive train ms | naive eval ms | engine auto ms | engine exact ms "
          "| auto vs naive train | auto vs naive eval |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in results["models"]:
        ms, rel = r["ms"], r["vs_naive_train"]
        print(f"| {r['decoder']} | {r['auto_backend']} | {ms['naive train']:.3f} | {ms['naive eval']:.3f} | "
              f"{ms['engine auto']:.3f} | {ms['engine exact']:.3f} | **{rel['engine auto']:.2f}x** | "
              f"{ms['engine auto'] / ms['naive eval']:.2f}x |")
    for r in results["models"]:
        print(f"{r['decoder']}: auto report {json.dumps({k: r['auto_report'].get(k) for k in ('grey_levels', 'time_vs_eager', 'skipped')})}; "
              f"grey levels vs exact on the timed batch: {r['grey_levels_vs_exact']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
