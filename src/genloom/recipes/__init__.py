"""Training recipes: one module per ``genloom train <family>``, each with its flags, defaults and presets.

A recipe module defines ``HELP``, ``DEFAULTS`` (train-config defaults), ``PRESETS`` (name -> overrides),
``add_args(parser)`` and ``build(args, tcfg) -> Built``; ``genloom.recipes.common`` does the rest.
"""
from __future__ import annotations

import importlib
from types import ModuleType

RECIPES: dict[str, str] = {
    "vae": "genloom.recipes.vae",
    "gan": "genloom.recipes.gan",
    "classifier": "genloom.recipes.classifier",
    "lm": "genloom.recipes.lm",
    "flow": "genloom.recipes.flow",
}


def recipe(name: str) -> ModuleType:
    return importlib.import_module(RECIPES[name])
