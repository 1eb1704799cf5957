"""GPU check: every family for a fixed number of steps on one GPU and with torchrun over all GPUs, losses checked
against a CPU run of the same steps, plus the speed targets of issue 12.

    python benchmarks/gpu_check.py                  # on a CUDA machine (run from the repository root)
    python benchmarks/gpu_check.py --dry-run        # anywhere: the same flow with --device cpu and 2 CPU ranks

Checks, per family (all runs fp32 with TF32 off, so the CPU is a valid reference):
  * one GPU vs CPU: first logged loss within 1e-3 relative (kernels differ in summation order, so later steps drift,
    the GAN's fastest); mean of the last 5 logged losses within 5 % relative (the runs train to the same place);
  * torchrun over all GPUs (global batch unchanged) vs one GPU: the same two checks.
Prints steps/s, samples/s and peak memory (CUDA: max allocated; CPU: max RSS) for each run.
Targets (CUDA only, default precision auto): the 10-epoch VAE in ≤ 10 s wall including data load and start-up,
and the LM `medium` preset at ≥ 20x the tokens/s of 2 CPU cores (measured here, 2 threads, same steps).
Exit code 0 when every check passes; the table is printed either way (``--json`` for one JSON object).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FAMILIES = {
    # family: (train args, batch size)
    "vae": (["vae", "--batch-size", "128"], 128),
    "gan": (["gan", "--select-samples", "0", "--batch-size", "64"], 64),
    "lm": (["lm", "--preset", "quick", "--val-every", "100000", "--batch-size", "16"], 16),
}
FIRST_TOL, TAIL_TOL = 1e-3, 0.05


def train(args: list[str], out: Path, *, device: str, steps: int | None, nproc: int = 1, threads: int | None = None,
          precision: str = "fp32", extra: list[str] | None = None, log_every: int = 5) -> dict:
    cmd = [sys.executable, "-m", "genloom", "train", *args, "--device", device, "--precision", precision,
           "--no-progress", "--out", str(out), "--log-every", str(log_every), *(extra or [])]
    if steps is not None:
        cmd += ["--steps", str(steps)]
    if threads:
        cmd += ["--threads", str(threads)]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    env = {**os.environ}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    t0 = time.monotonic()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if r.returncode != 0:
        raise SystemExit(f"gpu_check: {' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [x["loss"] for x in rows if x["type"] == "train"]
    rates = [x["samples_per_s"] for x in rows if x["type"] == "train"][1:] or [math_nan()]
    info = json.loads(subprocess.run([sys.executable, "-m", "genloom", "info", str(out / "model.safetensors")],
                                     capture_output=True, text=True, check=True).stdout)
    prov = info["provenance"]
    secs = float(prov.get("train_seconds") or 0) or wall
    return {"losses": losses, "samples_per_s": statistics.median(rates), "steps_per_s": prov["steps"] / secs,
            "peak_mb": prov.get("peak_memory_mb"), "wall_s": wall, "precision": prov.get("precision"),
            "world_size": prov.get("world_size", 1)}


def math_nan() -> float:
    return float("nan")


def compare(ref: list[float], got: list[float]) -> tuple[float, float, bool]:
    first = abs(got[0] - ref[0]) / max(abs(ref[0]), 1e-12)
    tail = abs(statistics.mean(got[-5:]) - statistics.mean(ref[-5:])) / max(abs(statistics.mean(ref[-5:])), 1e-12)
    return first, tail, len(got) == len(ref) and first <= FIRST_TOL and tail <= TAIL_TOL


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="no GPU needed: the 'GPU' runs use --device cpu")
    ap.add_argument("--steps", type=int, default=50, help="steps per family and run")
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--data", default=None, help="--data for the image families (IDX directory)")
    ap.add_argument("--text", default=None, help="--data for the LM (a UTF-8 file)")
    ap.add_argument("--no-targets", action="store_true", help="skip the speed targets")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)

    import torch

    n_gpu = torch.cuda.device_count()
    if not a.dry_run and n_gpu == 0:
        print("gpu_check: no CUDA device here; run with --dry-run to exercise the script on the CPU", file=sys.stderr)
        return 2
    dev = "cpu" if a.dry_run else "cuda"
    nproc_all = 2 if a.dry_run else n_gpu
    report: dict = {"device": "cpu (dry run)" if a.dry_run else torch.cuda.get_device_name(0), "gpus": n_gpu,
                    "families": {}, "targets": {}}
    ok = True
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for fam in a.families.split(","):
            args, batch = FAMILIES[fam]
            args = list(args)
            if fam == "lm" and a.text:
                args += ["--data", a.text]
            elif fam != "lm" and a.data:
                args += ["--data", a.data]
            cpu = train(args, tmp / f"{fam}-cpu", device="cpu", steps=a.steps, threads=2)
            one = train(args, tmp / f"{fam}-one", device=dev, steps=a.steps, threads=2 if a.dry_run else None)
            runs = {"cpu": cpu, "one": one}
            checks = {"one_vs_cpu": compare(cpu["losses"], one["losses"])}
            if nproc_all > 1:
                runs["all"] = train(args, tmp / f"{fam}-all", device=dev, steps=a.steps, nproc=nproc_all,
                                    threads=1 if a.dry_run else None)
                checks["all_vs_one"] = compare(one["losses"], runs["all"]["losses"])
            ok &= all(c[2] for c in checks.values())
            report["families"][fam] = {"runs": {k: {kk: vv for kk, vv in v.items() if kk != "losses"}
                                                for k, v in runs.items()},
                                       "checks": {k: {"first_rel": c[0], "tail_rel": c[1], "ok": c[2]}
                                                  for k, c in checks.items()}}
        if not a.no_targets and not a.dry_run:
            data = ["--data", a.data] if a.data else []
            vae = train(["vae", *data], tmp / "vae-10ep", device="cuda", steps=None, precision="auto",
                        extra=["--epochs", "10"], log_every=100)
            report["targets"]["vae_10_epochs_wall_s"] = {"value": round(vae["wall_s"], 2), "target": "<= 10",
                                                         "ok": vae["wall_s"] <= 10}
            text = ["--data", a.text] if a.text else []
            med = ["lm", "--preset", "medium", "--val-every", "100000", *text]
            gpu = train(med, tmp / "lm-gpu", device="cuda", steps=200, precision="auto", log_every=20)
            cpu = train(med, tmp / "lm-cpu", device="cpu", steps=20, precision="auto", threads=2, log_every=5)
            ratio = gpu["samples_per_s"] / cpu["samples_per_s"]  # windows per second: same block size both sides
            report["targets"]["lm_medium_tokens_per_s_vs_2_cpu_cores"] = {"value": round(ratio, 1),
                                                                          "target": ">= 20", "ok": ratio >= 20}
            ok &= all(t["ok"] for t in report["targets"].values())
    report["ok"] = bool(ok)
    if a.json:
        print(json.dumps(report))
    else:
        print(f"device: {report['device']}  GPUs: {n_gpu}  tolerances: first loss {FIRST_TOL:g}, "
              f"last-5 mean {TAIL_TOL:g} relative")
        for fam, r in report["families"].items():
            for name, run in r["runs"].items():
                peak = f"{run['peak_mb']:.0f} MB" if run["peak_mb"] else "?"
                print(f"  {fam:<4} {name:<4} world {run['world_size']}: {run['steps_per_s']:8.2f} steps/s "
                      f"{run['samples_per_s']:10.0f} samples/s  peak {peak}")
            for name, c in r["checks"].items():
                print(f"  {fam:<4} {name}: first {c['first_rel']:.2e}  tail {c['tail_rel']:.2e}  "
                      f"{'ok' if c['ok'] else 'FAIL'}")
        for name, t in report["targets"].items():
            print(f"  target {name}: {t['value']} ({t['target']}) {'ok' if t['ok'] else 'FAIL'}")
        print("gpu_check:", "ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
