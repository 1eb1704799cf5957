"""The GAN acceptance comparison, side by side on one machine with one FID evaluator:

  1. ``--preset gulrajani`` (the WGAN-GP authors' MNIST recipe) for 30 minutes
  2. genloom's default WGAN-GP (``--loss wgan-gp``) for 15 minutes   → must reach ≤ the FID of (1)
  3. the default ``genloom train gan`` for 30 minutes               → must reach ≤ ⅓ the FID of (4)
  4. the VAE for 10 epochs

    .venv/bin/python benchmarks/gan_compare.py --out runs/gan_compare [--threads 2] [--scale 1.0]

``--scale 0.05`` shrinks every budget (and the VAE's epochs) for a dry run of the script itself. Runs go one
after another so that each has the machine's cores to itself; results land in OUT/results.json and a Markdown
table on stdout. Two invocations with ``--only`` and ``--threads 1`` may run at once on one OUT (one per core):
each merges its result into results.json. FIDs: 10,000 samples vs the 10,000 test images, features of the shipped classifier, seed 0.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

RUNS: dict[str, list[str]] = {
    "gulrajani-30min": ["gan", "--preset", "gulrajani", "--time-budget", "1800"],
    "wgan-gp-default-15min": ["gan", "--loss", "wgan-gp", "--time-budget", "900"],
    "gan-default-30min": ["gan", "--time-budget", "1800"],
    "vae-10epochs": ["vae", "--epochs", "10"],
}


def _genloom(*argv: str) -> str:
    cmd = [sys.executable, "-m", "genloom.cli", *argv]
    print("$ genloom " + " ".join(argv), file=sys.stderr, flush=True)
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def _scaled(argv: list[str], scale: float) -> list[str]:
    out = list(argv)
    for flag in ("--time-budget", "--epochs"):
        if flag in out:
            i = out.index(flag) + 1
            v = float(out[i]) * scale
            out[i] = str(max(1, round(v))) if flag == "--epochs" else f"{max(v, 5.0):g}"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/gan_compare"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every time budget / epoch count")
    ap.add_argument("--fid-samples", type=int, default=10_000)
    ap.add_argument("--only", nargs="*", default=None, help="run only these names (others: reuse results)")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    res_path = a.out / "results.json"
    results = json.loads(res_path.read_text()) if res_path.exists() else {}
    for name, argv in RUNS.items():
        if a.only is not None and name not in a.only:
            continue
        run_dir = a.out / name
        t = time.monotonic()
        summary = json.loads(_genloom("train", *_scaled(argv, a.scale), "--out", str(run_dir), "--threads",
                                      str(a.threads), "--no-progress").strip().splitlines()[-1])
        wall = time.monotonic() - t
        ev = json.loads(_genloom("eval", str(run_dir / "model.safetensors"), "--fid", "--iwae-k", "0",
                                 "--fid-samples", str(a.fid_samples), "--seed", "0", "--json"))
        _genloom("sample", str(run_dir / "model.safetensors"), "-n", "64", "--seed", "0", "-o",
                 str(a.out / f"{name}.png"))
        results = json.loads(res_path.read_text()) if res_path.exists() else {}  # concurrent --only runs
        results[name] = {"fid": ev["fid"], "steps": summary["steps"], "train_seconds": summary["train_seconds"],
                         "wall_seconds": round(wall, 1), "argv": _scaled(argv, a.scale)}
        res_path.write_text(json.dumps(results, indent=2))
    print("| run | command | steps | train s | FID |\n|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | `genloom train {' '.join(r['argv'])}` | {r['steps']} | {r['train_seconds']} | "
              f"{r['fid']:.2f} |")
    g, w = results.get("gulrajani-30min"), results.get("wgan-gp-default-15min")
    d, v = results.get("gan-default-30min"), results.get("vae-10epochs")
    if g and w:
        print(f"\nwgan-gp default at 15 min vs gulrajani at 30 min: {w['fid']:.2f} vs {g['fid']:.2f} → "
              f"{'PASS' if w['fid'] <= g['fid'] else 'FAIL'}")
    if d and v:
        print(f"default GAN at 30 min vs VAE/3: {d['fid']:.2f} vs {v['fid'] / 3:.2f} → "
              f"{'PASS' if d['fid'] <= v['fid'] / 3 else 'FAIL'}")


if __name__ == "__main__":
    main()
