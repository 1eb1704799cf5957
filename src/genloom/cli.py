"""The ``genloom`` command: thin argument handling that calls into the stages.

Exit codes: 0 success, 2 bad input (one-line error on stderr), 130 interrupted (checkpoint saved).
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any, Callable

from genloom import __version__
from genloom.errors import GenloomError

# Subcommands contributed by other stages: each module has ``register(subparsers)``; missing ones are skipped.
EXTENSIONS: list[str] = [
    "genloom.serve.cli",
    "genloom.queue.cli",
    "genloom.engine.cli",
]

# kind -> "module:function" for `genloom sample` and `genloom eval`; each gets (args, model_path, header)
SAMPLERS: dict[str, str] = {
    "vae": "genloom.commands.images:sample",
    "lm": "genloom.commands.lm:sample",
    "gan": "genloom.commands.images:sample",
}
EVALUATORS: dict[str, str] = {
    "vae": "genloom.commands.images:evaluate",
    "lm": "genloom.commands.lm:evaluate",
    "gan": "genloom.commands.fid:evaluate",
}


def _resolve(table: dict[str, str], kind: str, what: str) -> Callable[..., Any]:
    if kind not in table:
        raise GenloomError(f"`genloom {what}` does not support models of kind {kind!r}")
    mod, fn = table[kind].split(":")
    return getattr(importlib.import_module(mod), fn)


def _cmd_train(args: argparse.Namespace) -> int:
    from genloom.recipes import recipe
    from genloom.recipes.common import run

    summary = run(recipe(args.family), args)
    print(json.dumps(summary))
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from genloom.export import read_header

    h = read_header(args.model)
    print(json.dumps({"path": str(h.path), "kind": h.kind, "format": h.format, "config": h.config,
                      "provenance": h.provenance,
                      "extra_metadata": {k: v for k, v in h.metadata.items()
                                         if k not in ("genloom.kind", "genloom.format", "genloom.config",
                                                      "genloom.provenance", "genloom.vocab")},
                      "tensors": {k: {"dtype": d, "shape": s} for k, (d, s) in sorted(h.tensors.items())}},
                     indent=2))
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from genloom.export import read_header

    h = read_header(args.model)
    return _resolve(SAMPLERS, h.kind, "sample")(args, h) or 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from genloom.export import read_header

    h = read_header(args.model)
    result = _resolve(EVALUATORS, h.kind, "eval")(args, h)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>16}: {v:.4f}" if isinstance(v, float) else f"{k:>16}: {v}")
    return 0


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from genloom.quickstart import quickstart

    return quickstart(args)


def build_parser() -> argparse.ArgumentParser:
    from genloom.recipes import RECIPES, recipe
    from genloom.recipes.common import add_common_args

    p = argparse.ArgumentParser(prog="genloom", description="Train, export, sample, evaluate and serve "
                                "generative models (VAE, GAN, Transformer LM).")
    p.add_argument("--version", action="version", version=f"genloom {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a model; writes OUT/model.safetensors",
                       description="Train one model family with the shared Trainer.")
    tsub = t.add_subparsers(dest="family", required=True, metavar="FAMILY")
    for name in RECIPES:
        rec = recipe(name)
        fp = tsub.add_parser(name, help=rec.HELP, description=rec.HELP)
        add_common_args(fp, rec)
        rec.add_args(fp)
    t.set_defaults(func=_cmd_train)

    s = sub.add_parser("sample", help="draw samples from a model file",
                       description="VAE/GAN: an image grid (.png) or a float32 (N, 28, 28) array in [0, 1] (.npy). "
                                   "LM: text for --prompt.")
    s.add_argument("model", type=Path, help="a genloom .safetensors file")
    s.add_argument("-n", type=int, default=64, help="number of samples (images; default 64)")
    s.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same samples")
    s.add_argument("--labels", type=str, default=None,
                   help="class labels for a conditional model: one label for all, or a comma-separated list of n")
    s.add_argument("-o", "--out", type=Path, default=None, help="output file: .png (grid) or .npy")
    s.add_argument("--prompt", type=str, default=None, help="LM: the prompt text")
    s.add_argument("--max-new-tokens", type=int, default=200, help="LM: tokens to generate")
    s.add_argument("--temperature", type=float, default=0.8, help="LM: sampling temperature (0 = greedy)")
    s.add_argument("--top-k", type=int, default=None, help="LM: keep the k most likely tokens")
    s.add_argument("--top-p", type=float, default=None, help="LM: nucleus sampling mass")
    s.add_argument("--stop", action="append", default=None, help="LM: stop string (repeatable)")
    s.add_argument("--stream", action="store_true", help="LM: print tokens as they are generated")
    s.set_defaults(func=_cmd_sample)

    e = sub.add_parser("eval", help="evaluate a model file on held-out data",
                       description="VAE: test-set negative ELBO and IWAE bound (nats/image). "
                                   "LM: next-char loss and bits per char.")
    e.add_argument("model", type=Path, help="a genloom .safetensors file")
    e.add_argument("--dataset", default=None, help="image dataset (default: the one in the file's provenance)")
    e.add_argument("--data", type=Path, default=None, help="directory with the IDX files")
    e.add_argument("--iwae-k", type=int, default=100, help="VAE: importance samples for the IWAE bound (0 = off)")
    e.add_argument("--seed", type=int, default=0, help="seed for the Monte-Carlo estimates")
    e.add_argument("--text", type=Path, default=None, help="LM: score this UTF-8 file")
    e.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    e.add_argument("--fid", action="store_true",
                   help="image models: add the FID of generated samples vs the test set (always on for a GAN)")
    e.add_argument("--classifier", type=Path, default=None,
                   help="FID feature classifier (default: $GENLOOM_CLASSIFIER, then the one shipped with genloom)")
    e.add_argument("--fid-samples", type=int, default=10_000, help="generated samples for the FID (default 10000)")
    e.set_defaults(func=_cmd_eval)

    i = sub.add_parser("info", help="print a model file's metadata as JSON",
                       description="Print kind, config, provenance and tensor shapes of a model file.")
    i.add_argument("model", type=Path, help="a genloom .safetensors file")
    i.set_defaults(func=_cmd_info)

    q = sub.add_parser("quickstart", help="train small VAE, GAN and LM briefly, export, sample (and serve)",
                       description="The main job in one command: train a small VAE, a GAN and a character LM "
                                   "briefly, export them, write samples, print the VAE's test ELBO, and with "
                                   "--serve serve all three over HTTP.")
    q.add_argument("--out", type=Path, default=Path("runs/quickstart"), help="run directory")
    q.add_argument("--epochs", type=int, default=3, help="VAE epochs")
    q.add_argument("--budget", type=float, default=60.0, help="training seconds for the GAN and for the LM")
    q.add_argument("--data", type=Path, default=None, help="directory with the Fashion-MNIST IDX files")
    q.add_argument("--text", type=Path, default=None, help="UTF-8 corpus for the LM (default: tinyshakespeare)")
    q.add_argument("--serve", action="store_true", help="serve the trained model(s) afterwards")
    q.add_argument("--port", type=int, default=8000, help="port for --serve")
    q.set_defaults(func=_cmd_quickstart)

    for mod in EXTENSIONS:
        try:
            importlib.import_module(mod).register(sub)
        except ModuleNotFoundError as e:  # an optional dependency of that stage is missing
            if not e.name or not e.name.startswith("genloom"):
                continue
            raise
    return p


def main(argv: list[str] | None = None) -> int:
    from genloom.runconfig import main_argv

    parser = build_parser()
    try:
        argv = main_argv(argv, parser)  # train --config FILE: the file's flags, before the command line's
    except GenloomError as e:
        print(f"genloom: error: {e}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except GenloomError as e:
        print(f"genloom: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, argparse.ArgumentTypeError) as e:
        print(f"genloom: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
