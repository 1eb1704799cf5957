"""The ``genloom`` command. Every subcommand lives in one module of this package with ``register(subparsers)``.

Exit codes: 0 success; 2 bad input — a :class:`~genloom.errors.GenloomError` (one line ``genloom: error: …``) or
a bad flag (argparse's usage message); 1 anything else, with its traceback (a bug: please report it); 130
interrupted (a training run saves a checkpoint first).
"""
from __future__ import annotations

import argparse
import importlib
import sys

from genloom import __version__
from genloom.errors import GenloomError

# One module per command group, in the order `genloom --help` lists them. Each has ``register(subparsers)``.
COMMANDS: tuple[str, ...] = (
    "genloom.cli.train",
    "genloom.cli.sample",
    "genloom.cli.eval",
    "genloom.cli.info",
    "genloom.cli.quickstart",
    "genloom.cli.serve",
    "genloom.cli.queue",
    "genloom.cli.bench",
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="genloom", description="Train, export, sample, evaluate and serve "
                                "generative models (VAE, GAN, Transformer LM).")
    p.add_argument("--version", action="version", version=f"genloom {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for mod in COMMANDS:
        importlib.import_module(mod).register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from genloom.runconfig import main_argv

    parser = build_parser()
    try:
        argv = main_argv(argv, parser)  # train --config FILE: the file's flags, placed before the command line's
    except GenloomError as e:
        print(f"genloom: error: {e}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except GenloomError as e:  # the user's input: one line that names the fix. Anything else is a bug: traceback.
        print(f"genloom: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
