"""``genloom train FAMILY``: the options are declared by the recipes (``recipes.common.add_common_args`` and each
recipe's ``add_args``); parsing flags gives the namespace ``genloom.train(...)`` builds from keywords."""
from __future__ import annotations

import argparse
import json
from typing import Any


def register(sub: Any) -> None:
    from genloom.api import add_family_args
    from genloom.recipes import RECIPES, recipe

    t = sub.add_parser("train", help="train a model; writes OUT/model.safetensors",
                       description="Train one model family with the shared Trainer.")
    tsub = t.add_subparsers(dest="family", required=True, metavar="FAMILY")
    for name in RECIPES:
        help_ = recipe(name).HELP
        add_family_args(tsub.add_parser(name, help=help_, description=help_), name)
    t.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from genloom.api import run_train

    summary = run_train(args.family, args)
    if summary:  # empty on ranks other than 0, and in the launcher of --nproc (rank 0 printed it)
        print(json.dumps(summary))
    return 0
