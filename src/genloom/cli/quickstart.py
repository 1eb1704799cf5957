"""`genloom quickstart`: the main job in one command, through the Python API (``genloom.train`` & co.).

Trains a small VAE, a GAN and a character LM briefly (Fashion-MNIST and Tiny Shakespeare), exports each to a
self-describing safetensors file, writes sample grids / text, prints the VAE's test ELBO, and with ``--serve``
serves all three over HTTP (the playground at ``/``). A few minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    q = sub.add_parser("quickstart", help="train small VAE, GAN and LM briefly, export, sample (and serve)",
                       description="The main job in one command: train a small VAE, a GAN and a character LM "
                                   "briefly, export them, write samples, print the VAE's test ELBO, and with "
                                   "--serve serve all three over HTTP.")
    q.add_argument("--out", type=Path, default=Path("runs/quickstart"), help="run directory")
    q.add_argument("--epochs", type=int, default=3, help="VAE epochs")
    q.add_argument("--budget", type=float, default=60.0, help="training seconds for the LM")
    q.add_argument("--gan-steps", type=int, default=None,
                   help="GAN generator steps (default: the `quickstart` GAN preset's, which reaches FID ≤ 60)")
    q.add_argument("--data", type=Path, default=None, help="directory with the Fashion-MNIST IDX files")
    q.add_argument("--text", type=Path, default=None, help="UTF-8 corpus for the LM (default: tinyshakespeare)")
    q.add_argument("--serve", action="store_true", help="serve the trained model(s) afterwards")
    q.add_argument("--port", type=int, default=8000, help="port for --serve")
    q.set_defaults(func=quickstart)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def quickstart(args: argparse.Namespace) -> int:
    import genloom
    from genloom.viz import save_grid

    out: Path = args.out
    progress = sys.stderr.isatty()
    _say(f"training a VAE for {args.epochs} epochs → {out / 'vae'}")
    vae = Path(genloom.train("vae", out=out / "vae", dataset="fashion-mnist", data=args.data, epochs=args.epochs,
                             progress=progress)["model"])
    save_grid(genloom.sample(vae, 64, seed=0), out / "vae_samples.png")
    print(json.dumps(genloom.evaluate(vae, data=args.data, iwae_k=10)))
    _say(f"training a GAN (preset quickstart) → {out / 'gan'}")
    gan = Path(genloom.train("gan", out=out / "gan", dataset="fashion-mnist", data=args.data, preset="quickstart",
                             steps=args.gan_steps, progress=progress)["model"])
    save_grid(genloom.sample(gan, 64, seed=0), out / "gan_samples.png")
    _say(f"training a character LM for {args.budget:g} s → {out / 'lm'}")
    lm = Path(genloom.train("lm", out=out / "lm", preset="quick", data=args.text, time_budget=args.budget,
                            progress=progress)["model"])
    print("ROMEO:" + genloom.generate(lm, "ROMEO:", max_new_tokens=200, seed=0))
    models = {"vae": vae, "gan": gan, "lm": lm}
    print(json.dumps({name: str(p) for name, p in models.items()}))
    _say(f"samples: {out / 'vae_samples.png'}, {out / 'gan_samples.png'}")
    if args.serve:
        from genloom.cli.serve import run
        from genloom.serve.config import load_config

        _say(f"serving on http://127.0.0.1:{args.port}/ (playground at /, API docs at /docs); Ctrl-C stops")
        run(load_config(models=[f"{n}={p}" for n, p in models.items()], cli_server={"port": args.port}))
    return 0
