"""Sampling time of trained files through ``genloom.engine.load`` (default backend), side by side with a GAN file.

    python benchmarks/flow_speed.py FLOW.safetensors [more files] --gan GAN.safetensors [--n 64] [--rounds 9]

``genloom bench --only flow`` times random-weight models of the default architectures; this times the files a
user trained, whose weights decide what ``backend="auto"`` picks for the decoder (and the GAN generator). Each
round times one call of every file (n images at its default sampler settings, a new seed each round),
interleaved; medians over the rounds. Prints one JSON line per file with its p50 ms and ratio to the GAN's p50.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from genloom.engine import load


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--gan", type=Path, required=True, help="the GAN file to compare with")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    engines = {"gan": load(a.gan), **{str(f): load(f) for f in a.files}}
    times: dict[str, list[float]] = {k: [] for k in engines}
    for eng in engines.values():  # warm up
        eng.sample(a.n, seed=0)
    for r in range(a.rounds):
        for name, eng in engines.items():
            t = time.perf_counter()
            eng.sample(a.n, seed=r + 1)
            times[name].append(time.perf_counter() - t)
    gan = statistics.median(times["gan"])
    for name, eng in engines.items():
        d = eng.describe()
        p50 = statistics.median(times[name])
        print(json.dumps({"file": name, "kind": eng.kind, "backend": eng.backend, "sampler": d.get("sampler"),
                          "steps": d.get("steps"), "guidance": d.get("guidance"), "n": a.n,
                          "p50_ms": round(p50 * 1e3, 2), "vs_gan": round(p50 / gan, 2),
                          "threads": a.threads, "load_average": round(os.getloadavg()[0], 2)}))


if __name__ == "__main__":
    main()
