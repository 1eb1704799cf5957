"""VAE quality at equal wall time: what `genloom train vae --time-budget T` reaches in the time pytorch/examples
needs for its 10 epochs, measured side by side on this machine.

Each round: (1) the pytorch/examples `vae/main.py` recipe (rebuilt in benchmarks/vae_epoch.py: the lecture MLP,
Adam 1e-3, batch 128, its PIL/DataLoader data path, `train(epoch)` + `test(epoch)` per epoch) runs its 10 epochs in
a fresh process; T = the wall time of those 10 epochs (imports and data loading excluded, as for genloom's
budget); (2) `genloom train vae --time-budget T` (the default, lecture model) and (3)
`genloom train vae --preset P --time-budget T` (each P of ``--preset``) run right after it, each in a fresh process, then
`genloom eval FILE --json` scores both on the 10,000 test images (−ELBO with one z, IWAE k = 100). With
``--check-after`` the reference runs once more at the end, to show whether the load moved during the round.
The same ``--threads`` applies to every process. Prints a markdown table (and ``--json``: one object).

    nice -n 5 python benchmarks/vae_equal_time.py --threads 1 [--rounds 1] [--preset pixel,wide] [--check-after]
    python benchmarks/vae_equal_time.py --budget 60 --only preset   # skip the reference: a fixed T
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
GENLOOM = [str(Path(sys.executable).with_name("genloom"))]


def _ref_child(epochs: int, threads: int, seed: int) -> dict:
    """The reference's ``epochs`` epochs in this process; returns their wall time and its last test −ELBO."""
    import torch

    sys.path.insert(0, str(HERE))
    from vae_epoch import PILDataset, RefVAE, ref_loss  # the faithful rebuild of pytorch/examples vae/main.py

    from genloom.data.images import load_images

    torch.set_num_threads(threads)
    s = load_images("fashion-mnist")
    torch.manual_seed(seed)
    full = torch.cat([s.train.images, s.val.images]), torch.cat([s.train.labels, s.val.labels])
    model = RefVAE()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(PILDataset(*full), batch_size=128, shuffle=True)
    test_loader = torch.utils.data.DataLoader(PILDataset(s.test.images, s.test.labels), batch_size=128)
    t0 = time.perf_counter()
    test = float("nan")
    for _ in range(epochs):  # main.py: for epoch in 1..epochs: train(epoch); test(epoch)
        model.train()
        for x, _ in loader:
            opt.zero_grad()
            ref_loss(model, x).backward()
            opt.step()
        model.eval()
        tot = 0.0
        with torch.no_grad():
            for x, _ in test_loader:
                tot += float(ref_loss(model, x))
        test = tot / len(test_loader.dataset)  # main.py's "Test set loss" (nats per image)
    return {"seconds": time.perf_counter() - t0, "test_nelbo": test}


def run_reference(epochs: int, threads: int, seed: int) -> dict:
    load = os.getloadavg()[0]
    out = subprocess.run([sys.executable, __file__, "--ref-child", str(epochs), "--threads", str(threads),
                          "--seed", str(seed)], check=True, capture_output=True, text=True).stdout
    res = json.loads(out.strip().splitlines()[-1])
    res["load_before"] = round(load, 2)
    return res


def run_genloom(name: str, extra: list[str], budget: float, threads: int, out: Path, iwae_k: int) -> dict:
    """One `genloom train vae … --time-budget T` in a fresh process, then `genloom eval --json` on its file."""
    cmd = [*GENLOOM, "train", "vae", *extra, "--time-budget", f"{budget:.1f}", "--threads", str(threads),
           "--no-progress", "--out", str(out / name)]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    train = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    wall = time.perf_counter() - t0
    summary = json.loads(train.strip().splitlines()[-1])
    ev = subprocess.run([*GENLOOM, "eval", summary["model"], "--json", "--iwae-k", str(iwae_k)], check=True,
                        capture_output=True, text=True).stdout
    res = json.loads(ev.strip().splitlines()[-1])
    return {"name": name, "command": "genloom " + " ".join(cmd[1:]).replace(str(out) + "/", "runs/"),
            "load_before": round(load, 2), "process_wall_s": round(wall, 1),
            "train_seconds": summary["train_seconds"], "epochs": summary["epochs"], "steps": summary["steps"],
            "nelbo": round(res["nelbo"], 2), "iwae_nll": round(res.get("iwae_nll", float("nan")), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for every process (default 1)")
    ap.add_argument("--rounds", type=int, default=1, help="reference → default → preset, this many times")
    ap.add_argument("--preset", default="pixel,wide",
                    help="the presets measured beside the default, comma-separated (default pixel,wide)")
    ap.add_argument("--only", choices=("default", "preset"), default=None, help="run only one genloom command")
    ap.add_argument("--budget", type=float, default=None, help="use this T instead of measuring the reference")
    ap.add_argument("--ref-epochs", type=int, default=10, help=argparse.SUPPRESS)
    ap.add_argument("--check-after", action="store_true", help="run the reference once more at the end")
    ap.add_argument("--iwae-k", type=int, default=100)
    ap.add_argument("--out", type=Path, default=None, help="run directories (default: a temporary directory)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--ref-child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ref_child is not None:
        print(json.dumps(_ref_child(args.ref_child, args.threads, args.seed)))
        return
    tmp = None
    if args.out is None:
        tmp = tempfile.TemporaryDirectory()
        args.out = Path(tmp.name)
    presets = {p: ["--preset", p] for p in args.preset.split(",") if p}
    commands = {"default": [], **presets}
    if args.only:
        commands = {"default": []} if args.only == "default" else presets
    rounds = []
    for r in range(args.rounds):
        ref = None
        if args.budget is None:
            ref = run_reference(args.ref_epochs, args.threads, r)
        budget = args.budget if args.budget is not None else ref["seconds"]
        runs = [run_genloom(f"r{r}-{name}", extra, budget, args.threads, args.out, args.iwae_k)
                for name, extra in commands.items()]
        rounds.append({"reference": ref, "T": round(budget, 1), "genloom": runs})
        print(json.dumps(rounds[-1]), file=sys.stderr, flush=True)
    after = run_reference(args.ref_epochs, args.threads, 99) if args.check_after and args.budget is None else None
    res = {"threads": args.threads, "rounds": rounds, "reference_after": after}
    if tmp is not None:
        tmp.cleanup()
    if args.json:
        print(json.dumps(res))
        return
    print("| round | command | T (s) | reference 10 epochs (s) | load | trained (s) | epochs | process (s) "
          "| test −ELBO | IWAE k=100 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for i, rd in enumerate(rounds):
        ref = rd["reference"]
        if ref is not None:
            print(f"| {i + 1} | pytorch/examples vae/main.py, 10 epochs | — | {ref['seconds']:.1f} | "
                  f"{ref['load_before']} | {ref['seconds']:.1f} | 10 | — | {ref['test_nelbo']:.2f} | — |")
        for g in rd["genloom"]:
            print(f"| {i + 1} | `{g['command']}` | {rd['T']} | {ref['seconds'] if ref else float('nan'):.1f} | "
                  f"{g['load_before']} | {g['train_seconds']} | {g['epochs']} | {g['process_wall_s']} | "
                  f"**{g['nelbo']:.2f}** | **{g['iwae_nll']:.2f}** |")
    if after is not None:
        print(f"| after | pytorch/examples vae/main.py, 10 epochs (load check) | — | {after['seconds']:.1f} | "
              f"{after['load_before']} | {after['seconds']:.1f} | 10 | — | {after['test_nelbo']:.2f} | — |")
    print(f"\nthreads per process: {args.threads}; load = 1-minute load average before each run (2 cores)")


if __name__ == "__main__":
    main()
