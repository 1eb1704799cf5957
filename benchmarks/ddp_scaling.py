"""Data-parallel overhead on one machine: 2 ranks × 1 thread (gloo) vs 1 rank × 2 threads, same global batch;
and 1 rank × 1 thread, so that the communication cost shows: with free communication 2 ranks × 1 thread would take
half the 1 × 1 step.

Every side runs the real `genloom train` for a fixed number of steps; the step time is read from metrics.jsonl
(items per step / samples_per_s of each log window — the LM counts tokens, B·T — the first window dropped), median
over windows, then over rounds. The sides rotate round by round, so load from other processes hits them alike.

    python benchmarks/ddp_scaling.py [--rounds 3] [--json]

What it shows: on 2 cores, the communication (one all-reduce of all gradients per step, through loopback TCP)
against the intra-op parallelism one process gets from 2 threads.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CASES = {
    # name: (train args, steps, log_every)
    "lm-medium": (["lm", "--preset", "medium", "--val-every", "100000", "--batch-size", "16"], 16, 4),
    "vae": (["vae", "--batch-size", "128"], 200, 40),
}
ITEMS_PER_STEP = {"lm-medium": 16 * 256, "vae": 128}  # what samples_per_s counts: LM tokens, VAE images
SIDES = {"1x2": (1, 2), "2x1": (2, 1), "1x1": (1, 1)}


def run_once(case: str, side: str, out: Path) -> float:
    args, steps, log_every = CASES[case]
    nproc, threads = SIDES[side]
    cmd = [sys.executable, "-m", "genloom", "train", *args, "--steps", str(steps), "--log-every", str(log_every),
           "--precision", "fp32", "--no-progress", "--threads", str(threads), "--out", str(out)]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["type"] == "train"][1:]  # the first window includes warm-up
    return statistics.median(ITEMS_PER_STEP[case] / r["samples_per_s"] for r in train)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as d:
        for case in a.cases.split(","):
            res: dict[str, list[float]] = {side: [] for side in SIDES}
            order = list(SIDES)
            for r in range(a.rounds):
                for side in order[r % 3:] + order[:r % 3]:
                    res[side].append(run_once(case, side, Path(d) / f"{case}-{side}-{r}"))
            results[case] = res
    summary = {case: {side: round(statistics.median(v) * 1e3, 2) for side, v in res.items()}
               for case, res in results.items()}
    if a.json:
        print(json.dumps({"ms_per_step": summary, "runs": results}))
        return
    print(f"{'case':<10} {'1 rank x 2 thr':>15} {'2 ranks x 1 thr':>16} {'1 rank x 1 thr':>15} {'2x1 / 1x2':>10}"
          f" {'2x1 / (1x1 / 2)':>16}")
    for case, s in summary.items():
        print(f"{case:<10} {s['1x2']:>12.1f} ms {s['2x1']:>13.1f} ms {s['1x1']:>12.1f} ms {s['2x1'] / s['1x2']:>9.2f}x"
              f" {s['2x1'] / (s['1x1'] / 2):>15.2f}x")


if __name__ == "__main__":
    main()
