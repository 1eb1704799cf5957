"""genloom's `quick` LM preset vs nanoGPT's CPU recipe, run back to back (alternating) on the same data.

    .venv/bin/python benchmarks/lm_vs_nanogpt.py --nanogpt PATH/TO/nanoGPT --rounds 2 [--threads N]

PATH/TO/nanoGPT is a checkout of karpathy/nanoGPT (not part of genloom) whose data/shakespeare_char/ has been
prepared from the same tinyshakespeare.txt (copy it to data/shakespeare_char/input.txt and run prepare.py).
Both get the same OMP_NUM_THREADS when --threads is given. For each run: wall seconds of the whole command,
CPU seconds (user + sys of the child; steadier than wall on a shared machine) and the final validation loss
(nanoGPT: its estimate over --eval_iters=20 random batches; genloom: the full validation split).
Prints one JSON object with the per-round numbers and the median ratios genloom / nanoGPT.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NANOGPT_ARGS = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
                "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4",
                "--n_embd=128", "--max_iters=2000", "--lr_decay_iters=2000", "--dropout=0.0"]


def run(cmd: list[str], *, cwd: str | None, env: dict[str, str]) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (user + sys, via /usr/bin/time for this child alone), output."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        t0 = time.perf_counter()
        p = subprocess.run(["/usr/bin/time", "-f", "%U %S", "-o", tf.name, *cmd], cwd=cwd, env=env,
                           capture_output=True, text=True)
        wall = time.perf_counter() - t0
        user, sys_ = (float(v) for v in Path(tf.name).read_text().split()[-2:])
    if p.returncode != 0:
        sys.exit(f"command failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-2000:]}")
    return wall, user + sys_, p.stdout + p.stderr


def nanogpt(root: Path, out: Path, env: dict[str, str]) -> dict[str, float]:
    wall, cpu, log = run([sys.executable, "train.py", *NANOGPT_ARGS, f"--out_dir={out}"], cwd=str(root), env=env)
    vals = re.findall(r"step (\d+): train loss ([\d.]+), val loss ([\d.]+)", log)
    if not vals:
        sys.exit("no 'step N: ... val loss' lines in nanoGPT's output")
    return {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "val_loss": float(vals[-1][2]), "step": int(vals[-1][0])}


def genloom(data: Path, out: Path, env: dict[str, str], extra: list[str]) -> dict[str, float]:
    cmd = [str(Path(sys.executable).with_name("genloom")), "train", "lm", "--preset", "quick", "--data", str(data),
           "--out", str(out), "--no-progress", *extra]
    wall, cpu, log = run(cmd, cwd=None, env=env)
    summary = json.loads([line for line in log.splitlines() if line.startswith('{"model"')][-1])
    return {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "val_loss": summary["best_val_loss"],
            "step": summary["steps"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nanogpt", type=Path, required=True, help="a prepared karpathy/nanoGPT checkout")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for both (default: unset)")
    ap.add_argument("--genloom-args", default="", help="extra flags for genloom train lm (quoted)")
    ap.add_argument("--parallel", action="store_true",
                    help="run the two at the same time (same machine load for both) instead of alternating")
    args = ap.parse_args()
    data = args.nanogpt / "data" / "shakespeare_char" / "input.txt"
    if not (args.nanogpt / "data" / "shakespeare_char" / "val.bin").is_file():
        sys.exit(f"{args.nanogpt}: run data/shakespeare_char/prepare.py first (with input.txt in place)")
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            if args.parallel:
                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(2) as ex:
                    fn = ex.submit(nanogpt, args.nanogpt, Path(tmp) / f"nano{r}", env)
                    fg = ex.submit(genloom, data, Path(tmp) / f"gl{r}", env, args.genloom_args.split())
                    n, g = fn.result(), fg.result()
            else:
                n = nanogpt(args.nanogpt, Path(tmp) / f"nano{r}", env)
                g = genloom(data, Path(tmp) / f"gl{r}", env, args.genloom_args.split())
            rows.append({"round": r, "nanogpt": n, "genloom_quick": g,
                         "load_avg_after": round(os.getloadavg()[0], 2)})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    ratio = {k: round(statistics.median(x["genloom_quick"][k] / x["nanogpt"][k] for x in rows), 3)
             for k in ("wall_s", "cpu_s")}
    print(json.dumps({"threads": args.threads, "rounds": rows, "median_ratio_genloom_over_nanogpt": ratio},
                     indent=2))


if __name__ == "__main__":
    main()
