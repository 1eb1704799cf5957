"""`--precision auto` vs `--precision fp32`, per family, side by side on this machine's CPU.

Each side is a real `genloom train` run for a fixed number of steps; the step time is read from metrics.jsonl
(global batch / samples_per_s per log window, the first window dropped), median over windows, then over rounds.
Sides alternate round by round. `auto` runs its probe (fp32 vs bf16 on copies of the model) in a fresh cache dir
every round, so the choice is re-measured each time and reported.

    python benchmarks/precision_auto.py [--rounds 3] [--threads 2] [--json]
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
    # name: (train args, steps, log_every, batch)
    "vae": (["vae"], 200, 40, 128),
    "gan": (["gan", "--select-samples", "0"], 20, 5, 64),
    "lm-quick": (["lm", "--preset", "quick", "--val-every", "100000"], 40, 10, 16),
    "lm-medium": (["lm", "--preset", "medium", "--val-every", "100000"], 12, 3, 16),
}


def run_once(case: str, precision: str, out: Path, threads: int) -> tuple[float, str]:
    args, steps, log_every, batch = CASES[case]
    cmd = [sys.executable, "-m", "genloom", "train", *args, "--steps", str(steps), "--log-every", str(log_every),
           "--precision", precision, "--no-progress", "--threads", str(threads), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "XDG_CACHE_HOME": str(out / "cache")}
    subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["type"] == "train"][1:]
    info = json.loads(subprocess.run([sys.executable, "-m", "genloom", "info", str(out / "model.safetensors")],
                                     check=True, capture_output=True, text=True, env=env).stdout)
    return statistics.median(batch / r["samples_per_s"] for r in train), info["provenance"].get("precision", "?")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as d:
        for case in a.cases.split(","):
            t: dict[str, list[float]] = {"fp32": [], "auto": []}
            chose: list[str] = []
            for r in range(a.rounds):
                for side in (("fp32", "auto") if r % 2 == 0 else ("auto", "fp32")):
                    sec, used = run_once(case, side, Path(d) / f"{case}-{side}-{r}", a.threads)
                    t[side].append(sec)
                    if side == "auto":
                        chose.append(used)
            out[case] = {"fp32_ms": round(statistics.median(t["fp32"]) * 1e3, 2),
                         "auto_ms": round(statistics.median(t["auto"]) * 1e3, 2), "auto_chose": chose, "runs": t}
    if a.json:
        print(json.dumps(out))
        return
    print(f"{'case':<10} {'fp32':>10} {'auto':>10} {'auto/fp32':>10}  auto chose")
    for case, o in out.items():
        print(f"{case:<10} {o['fp32_ms']:>7.1f} ms {o['auto_ms']:>7.1f} ms {o['auto_ms'] / o['fp32_ms']:>9.2f}x  "
              f"{', '.join(o['auto_chose'])}")


if __name__ == "__main__":
    main()
