"""Data-parallel overhead on one machine: 2 ranks × 1 thread (gloo) vs 1 rank × 2 threads, same global batch;
and 1 rank × 1 thread, so that the communication cost shows: with free communication 2 ranks × 1 thread would take
half the 1 × 1 step.

Every side runs the real `genloom train` for a fixed number of steps; the step time is read from metrics.jsonl
(items per step / samples_per_s of each log window — the LM counts tokens, B·T — the first window dropped), median
over windows, then over rounds. The sides rotate round by round, so load from other processes hits them alike.

    python benchmarks/ddp_scaling.py [--rounds 3] [--cases lm-medium,vae] [--json]
    python benchmarks/ddp_scaling.py --allreduce-only     # just the collective: 2 gloo ranks, each model's gradients

What it shows: on 2 cores, the communication (one all-reduce of all gradients per step, through loopback TCP)
against the intra-op parallelism one process gets from 2 threads. ``--allreduce`` (or ``--allreduce-only``) also
times the collective alone — ``dist.all_reduce`` of one flat float32 buffer the size of the model's parameters, 2
gloo ranks of 1 thread over 127.0.0.1, median — so that the step-time difference can be split into the all-reduce
itself and the rest (flattening, waiting for the slower rank).
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


def n_params(case: str) -> int:
    """Floats all-reduced per step: the model's parameter count (its gradients) for the case's recipe model."""
    if case == "vae":
        from genloom.models.vae import VAE, VAEConfig

        return sum(p.numel() for p in VAE(VAEConfig()).parameters())
    from genloom.models.transformer import LMConfig, TransformerLM

    cfg = LMConfig(vocab_size=65, block_size=256, n_layer=4, n_head=6, n_embd=192, pos="rope")  # preset medium
    return sum(p.numel() for p in TransformerLM(cfg, [chr(32 + i) for i in range(65)]).parameters())


def _allreduce_rank(rank: int, port: int, numel: int, iters: int, out: str) -> None:
    import time

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    flat = torch.randn(numel)
    for _ in range(5):
        dist.all_reduce(flat)
    times = []
    for _ in range(iters):
        dist.barrier()
        t0 = time.perf_counter()
        dist.all_reduce(flat)
        times.append(time.perf_counter() - t0)
    if rank == 0:
        Path(out).write_text(json.dumps(statistics.median(times)))
    dist.destroy_process_group()


def allreduce_ms(numel: int, iters: int = 200) -> float:
    """Median milliseconds of one gloo all-reduce of ``numel`` float32 between 2 processes on this machine."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as d:
        out = str(Path(d) / "t.json")
        mp.start_processes(_allreduce_rank, args=(port, numel, iters, out), nprocs=2, start_method="spawn")
        return json.loads(Path(out).read_text()) * 1e3


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
    ap.add_argument("--allreduce", action="store_true", help="also time the all-reduce alone per case")
    ap.add_argument("--allreduce-only", action="store_true", help="only time the all-reduce per case")
    a = ap.parse_args()
    cases = a.cases.split(",")
    collective = {c: {"floats": n_params(c), "allreduce_ms": round(allreduce_ms(n_params(c)), 3)}
                  for c in cases} if a.allreduce or a.allreduce_only else {}
    if a.allreduce_only:
        print(json.dumps({"allreduce": collective}) if a.json else "\n".join(
            f"{c:<10} all-reduce of {v['floats']:,} floats: {v['allreduce_ms']:.2f} ms" for c, v in collective.items()))
        return
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as d:
        for case in cases:
            res: dict[str, list[float]] = {side: [] for side in SIDES}
            order = list(SIDES)
            for r in range(a.rounds):
                for side in order[r % 3:] + order[:r % 3]:
                    res[side].append(run_once(case, side, Path(d) / f"{case}-{side}-{r}"))
            results[case] = res
    summary = {case: {side: round(statistics.median(v) * 1e3, 2) for side, v in res.items()}
               for case, res in results.items()}
    if a.json:
        print(json.dumps({"ms_per_step": summary, "runs": results, "allreduce": collective}))
        return
    print(f"{'case':<10} {'1 rank x 2 thr':>15} {'2 ranks x 1 thr':>16} {'1 rank x 1 thr':>15} {'2x1 / 1x2':>10}"
          f" {'2x1 / (1x1 / 2)':>16}")
    for case, s in summary.items():
        print(f"{case:<10} {s['1x2']:>12.1f} ms {s['2x1']:>13.1f} ms {s['1x1']:>12.1f} ms {s['2x1'] / s['1x2']:>9.2f}x"
              f" {s['2x1'] / (s['1x1'] / 2):>15.2f}x")
    for case, v in collective.items():
        print(f"{case:<10} all-reduce of {v['floats']:,} floats alone: {v['allreduce_ms']:.2f} ms")


if __name__ == "__main__":
    main()
