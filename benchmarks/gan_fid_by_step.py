"""FID of a `genloom train gan` run at several step counts, from one run (for choosing the quickstart GAN).

    .venv/bin/python benchmarks/gan_fid_by_step.py NAME MARKS N_FID [genloom train gan flags...]
    .venv/bin/python benchmarks/gan_fid_by_step.py lr1e-3 300,600,900,1200,1600 2000 --lr 1e-3

Trains with the recipe exactly as `genloom train gan --steps max(MARKS) FLAGS` does (1 thread), and at each mark
prints one JSON line: training seconds so far, FID of the raw and of the EMA generator (N_FID samples, seed 0,
against the 10,000 test images, the shipped classifier). Results in docs/benchmarks.md ("Quickstart GAN").
"""
from __future__ import annotations

import json
import sys
import time

import torch


def main() -> None:
    from genloom.cli import build_parser
    from genloom.data.images import load_images
    from genloom.eval.fid import fid, find_classifier, load_classifier, real_stats
    from genloom.recipes import recipe
    from genloom.recipes.common import train_config
    from genloom.training.trainer import Trainer

    name, marks, n_fid = sys.argv[1], sorted(int(x) for x in sys.argv[2].split(",")), int(sys.argv[3])
    torch.set_num_threads(1)
    args = build_parser().parse_args(["train", "gan", "--out", f"runs/fid_by_step/{name}", "--no-progress",
                                      "--steps", str(marks[-1]), *sys.argv[4:]])
    rec = recipe("gan")
    tcfg = train_config(args, rec)
    torch.manual_seed(tcfg.seed)
    built = rec.build(args, tcfg)
    test = load_images(args.dataset, args.data).test.images
    cpath = find_classifier(None)
    clf = load_classifier(cpath)
    stats = real_stats(cpath, clf, test)
    trained, since = 0.0, time.monotonic()

    def on_step(tr: Trainer, out) -> None:
        nonlocal trained, since
        if tr.step not in marks:
            return
        trained += time.monotonic() - since
        m = tr.model
        m.eval()
        r = {"name": name, "step": tr.step, "train_s": round(trained, 1),
             "raw": round(fid(m, clf, test, n_samples=n_fid, real_stats=stats, ema=False), 2)}
        if m.config.ema_kimg > 0:
            r["ema"] = round(fid(m, clf, test, n_samples=n_fid, real_stats=stats, ema=True), 2)
        m.train()
        print(json.dumps(r), flush=True)
        since = time.monotonic()

    Trainer(built.model, tcfg, built.train, built.val, provenance=built.provenance, on_step=on_step).fit()


if __name__ == "__main__":
    main()
