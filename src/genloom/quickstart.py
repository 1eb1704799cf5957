"""`genloom quickstart`: the main job in one command — train a small VAE, export, sample, evaluate."""
from __future__ import annotations

import argparse
import json
import sys

from genloom.cli import main as cli_main


def quickstart(args: argparse.Namespace) -> int:
    out = args.out
    data = ["--data", str(args.data)] if args.data else []
    steps = [
        ["train", "vae", "--dataset", "fashion-mnist", *data, "--epochs", str(args.epochs), "--out", str(out / "vae")],
        ["sample", str(out / "vae" / "model.safetensors"), "-n", "64", "--seed", "0", "-o", str(out / "vae_samples.png")],
        ["eval", str(out / "vae" / "model.safetensors"), *data, "--iwae-k", "10", "--json"],
    ]
    for argv in steps:
        print("$ genloom " + " ".join(argv), file=sys.stderr, flush=True)
        rc = cli_main(argv)
        if rc:
            return rc
    print(json.dumps({"model": str(out / "vae" / "model.safetensors"), "samples": str(out / "vae_samples.png")}))
    return 0
