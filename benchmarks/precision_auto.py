"""`--precision auto` vs `--precision fp32`, per family, side by side on this machine's CPU.

For each family the recipe builds the model and its data exactly as `genloom train` does; a Trainer resolves
`--precision auto` the way a run does (its start-up probe, in a fresh cache dir); then the training step (forward,
backward, optimizer step, on a copy of the model and optimizers) is timed under the fp32 plan and under the plan
`auto` chose, in alternating rounds (so load from other processes hits both alike), median per step. With
``--bf16`` the plan ``--precision bf16`` gives (the model's CPU bf16 mode) is timed in the same rounds: what
``auto`` would have cost had it picked bf16 — on a CPU without bf16 kernels (AVX2 only) the reason it does not try.

    python benchmarks/precision_auto.py [--threads 2] [--seconds 20] [--bf16] [--json]
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time

CASES = {
    # name: (family, options of genloom.train)
    "vae": ("vae", {}),
    "gan": ("gan", {"select_samples": 0}),
    "lm-quick": ("lm", {"preset": "quick"}),
    "lm-medium": ("lm", {"preset": "medium"}),
}


def measure(case: str, seconds: float, tmp: str, with_bf16: bool = False) -> dict:
    import torch

    from genloom.api import train_args
    from genloom.recipes import recipe
    from genloom.recipes.common import train_config
    from genloom.training import precision as prec
    from genloom.training.probe import ProbeHooks, precision_plan
    from genloom.training.trainer import Trainer

    family, opts = CASES[case]
    args = train_args(family, out=os.path.join(tmp, case), **opts)
    rec = recipe(family)
    tcfg = dataclasses.replace(train_config(args, rec), precision="auto", device="cpu", progress=False)
    torch.manual_seed(0)
    built = rec.build(args, tcfg)
    tr = Trainer(built.model, tcfg, built.train, built.val)
    t0 = time.perf_counter()
    auto = precision_plan(tr)  # the probe a run does at start-up (fresh cache: it really measures)
    probe_s = time.perf_counter() - t0
    plans = {"fp32": prec.plan("fp32", tr.device), "auto": auto}
    if with_bf16:
        plans["bf16"] = prec.plan("bf16", tr.device, cpu_bf16=getattr(tr.model, "cpu_bf16", "autocast"))
    batch = next(iter(tr.train_src.epoch(torch.Generator().manual_seed(1))))
    model = copy.deepcopy(tr.model)
    opts_ = model.configure_optimizers(tcfg)
    hooks = ProbeHooks(opts_)

    def step(side: str) -> None:
        with prec.applied(plans[side]), prec.autocast(plans[side]):
            model.train_step(batch, opts_, 0, hooks)

    sides = list(plans)
    for side in sides:  # warm-up
        step(side)
    t: dict[str, list[float]] = {side: [] for side in sides}
    end = time.monotonic() + seconds
    r = 0
    while time.monotonic() < end or r < 6:
        for side in (sides if r % 2 == 0 else sides[::-1]):
            t0 = time.perf_counter()
            step(side)
            t[side].append(time.perf_counter() - t0)
        r += 1
    med = {side: statistics.median(v) for side, v in t.items()}
    out = {"auto_chose": auto.precision, "how": auto.how, "probe_s": round(probe_s, 2), "steps_each": r,
           "fp32_ms": round(med["fp32"] * 1e3, 2), "auto_ms": round(med["auto"] * 1e3, 2),
           "auto_over_fp32": round(med["auto"] / med["fp32"], 3)}
    if with_bf16:
        out |= {"bf16_ms": round(med["bf16"] * 1e3, 2), "bf16_over_fp32": round(med["bf16"] / med["fp32"], 3)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=20.0, help="timing per case (at least 6 rounds)")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--bf16", action="store_true", help="also time the forced --precision bf16 plan")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        os.environ["XDG_CACHE_HOME"] = os.path.join(d, "cache")  # a fresh probe, not a cached verdict
        import torch

        torch.set_num_threads(a.threads)
        out = {c: measure(c, a.seconds, d, a.bf16) for c in a.cases.split(",")}
    if a.json:
        print(json.dumps(out))
        return
    print(f"{'case':<10} {'fp32':>10} {'auto':>10} {'auto/fp32':>10}{'  bf16/fp32' if a.bf16 else ''}  auto chose")
    for c, o in out.items():
        forced = f" {o['bf16_over_fp32']:>9.3f}x" if a.bf16 else ""
        print(f"{c:<10} {o['fp32_ms']:>7.1f} ms {o['auto_ms']:>7.1f} ms {o['auto_over_fp32']:>9.3f}x{forced}  "
              f"{o['auto_chose']} ({o['how']}, {o['probe_s']} s)", file=sys.stdout)


if __name__ == "__main__":
    main()
