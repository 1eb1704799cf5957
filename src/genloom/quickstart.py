"""`genloom quickstart`: the main job in one command.

Trains a small VAE, a GAN and a character LM briefly (Fashion-MNIST and Tiny Shakespeare), exports each to a
self-describing safetensors file, writes sample grids / text, prints the VAE's test ELBO, and with ``--serve``
serves all three over HTTP (the playground at ``/``). A few minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from genloom.cli import main as cli_main


def _run(argv: list[str]) -> None:
    print("$ genloom " + " ".join(argv), file=sys.stderr, flush=True)
    rc = cli_main(argv)
    if rc:
        raise SystemExit(rc)


def quickstart(args: argparse.Namespace) -> int:
    out: Path = args.out
    data = ["--data", str(args.data)] if args.data else []
    models = {"vae": out / "vae" / "model.safetensors", "gan": out / "gan" / "model.safetensors",
              "lm": out / "lm" / "model.safetensors"}
    _run(["train", "vae", "--dataset", "fashion-mnist", *data, "--epochs", str(args.epochs),
          "--out", str(out / "vae")])
    _run(["sample", str(models["vae"]), "-n", "64", "--seed", "0", "-o", str(out / "vae_samples.png")])
    _run(["eval", str(models["vae"]), *data, "--iwae-k", "10", "--json"])
    _run(["train", "gan", "--dataset", "fashion-mnist", *data, "--time-budget", str(args.budget),
          "--out", str(out / "gan")])
    _run(["sample", str(models["gan"]), "-n", "64", "--seed", "0", "-o", str(out / "gan_samples.png")])
    lm_data = ["--data", str(args.text)] if args.text else []
    _run(["train", "lm", "--preset", "quick", *lm_data, "--time-budget", str(args.budget),
          "--out", str(out / "lm")])
    _run(["sample", str(models["lm"]), "--prompt", "ROMEO:", "--max-new-tokens", "200", "--seed", "0"])
    print(json.dumps({name: str(p) for name, p in models.items()}))
    if args.serve:
        print(f"serving on http://127.0.0.1:{args.port}/ (playground at /, API docs at /docs); Ctrl-C stops",
              file=sys.stderr, flush=True)
        return cli_main(["serve", *(f"{n}={p}" for n, p in models.items()), "--port", str(args.port)])
    return 0
