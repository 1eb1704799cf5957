"""`--compile` (torch.compile of the model's loss) vs eager: one training step of each family's default model on
the CPU, alternating rounds, median per step; plus the one-off compile time.

    python benchmarks/compile_step.py [--threads 1] [--cases vae,lm-quick] [--rounds 15]
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch

from genloom.models.transformer import LMConfig, TransformerLM
from genloom.models.vae import VAE, VAEConfig
from genloom.training.probe import ProbeHooks


class _Cfg:
    lr, betas, weight_decay = 1e-3, (0.9, 0.99), 0.0


def case(name: str):
    if name == "vae":
        return VAE(VAEConfig()), (torch.rand(128, 1, 28, 28), torch.zeros(128, dtype=torch.long))
    cfg = LMConfig(vocab_size=65, block_size=64, n_layer=3, n_head=4, n_embd=128, pos="rope")  # the quick preset
    x = torch.randint(65, (16, 64))
    return TransformerLM(cfg, [chr(33 + i) for i in range(65)]), (x, x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cases", default="vae,lm-quick")
    ap.add_argument("--rounds", type=int, default=15)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    out = {}
    for name in a.cases.split(","):
        torch.manual_seed(0)
        eager, batch = case(name)
        comp = copy.deepcopy(eager)
        comp.loss = torch.compile(type(comp).loss.__get__(comp))  # what the Trainer does for --compile
        sides = {}
        for side, m in (("eager", eager), ("compile", comp)):
            opt = m.configure_optimizers(_Cfg())
            sides[side] = (m, opt, ProbeHooks(opt))
        t0 = time.perf_counter()
        m, opt, h = sides["compile"]
        m.train_step(batch, opt, 0, h)
        compile_s = time.perf_counter() - t0
        t: dict[str, list[float]] = {"eager": [], "compile": []}
        for r in range(a.rounds):
            for side in (("eager", "compile") if r % 2 == 0 else ("compile", "eager")):
                m, opt, h = sides[side]
                t0 = time.perf_counter()
                m.train_step(batch, opt, 0, h)
                t[side].append(time.perf_counter() - t0)
        e, c = statistics.median(t["eager"][2:]), statistics.median(t["compile"][2:])
        out[name] = {"eager_ms": round(e * 1e3, 2), "compile_ms": round(c * 1e3, 2), "ratio": round(c / e, 3),
                     "first_compiled_step_s": round(compile_s, 1)}
        print(json.dumps({name: out[name]}), flush=True)


if __name__ == "__main__":
    main()
