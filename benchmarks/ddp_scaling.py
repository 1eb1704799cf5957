"""Data-parallel overhead on one machine: 2 ranks × 1 thread (gloo) vs 1 rank × 2 threads, same global batch.

Both sides run the real `genloom train` for a fixed number of steps; the step time is read from metrics.jsonl
(global batch / samples_per_s of each log window, the first window — warm-up — dropped), median over windows, then
median over rounds. The sides alternate round by round, so load from other processes hits both alike.

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


def run_once(case: str, side: str, out: Path) -> float:
    args, steps, log_every = CASES[case]
    nproc, threads = (2, 1) if side == "2x1" else (1, 2)
    cmd = [sys.executable, "-m", "genloom", "train", *args, "--steps", str(steps), "--log-every", str(log_every),
           "--precision", "fp32", "--no-progress", "--threads", str(threads), "--out", str(out)]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["type"] == "train"][1:]  # the first window includes warm-up
    batch = int(args[args.index("--batch-size") + 1])
    return statistics.median(batch / r["samples_per_s"] for r in train)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as d:
        for case in a.cases.split(","):
            res: dict[str, list[float]] = {"1x2": [], "2x1": []}
            for r in range(a.rounds):
                for side in (("1x2", "2x1") if r % 2 == 0 else ("2x1", "1x2")):
                    res[side].append(run_once(case, side, Path(d) / f"{case}-{side}-{r}"))
            results[case] = res
    summary = {case: {side: round(statistics.median(v) * 1e3, 2) for side, v in res.items()}
               for case, res in results.items()}
    if a.json:
        print(json.dumps({"ms_per_step": summary, "runs": results}))
        return
    print(f"{'case':<10} {'1 rank x 2 threads':>20} {'2 ranks x 1 thread':>20} {'ratio 2x1/1x2':>14}")
    for case, s in summary.items():
        print(f"{case:<10} {s['1x2']:>17.1f} ms {s['2x1']:>17.1f} ms {s['2x1'] / s['1x2']:>13.2f}x")


if __name__ == "__main__":
    main()
