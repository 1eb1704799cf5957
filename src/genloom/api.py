"""The Python API under the CLI: ``genloom.train("vae", out="runs/vae", epochs=10)`` is
``genloom train vae --out runs/vae --epochs 10`` — both build the same options and run the same code.

Options are the family's flags with ``_`` for ``-`` (``time_budget=60`` is ``--time-budget 60``). They are
declared once — the shared ones in ``recipes.common.TRAIN_FLAGS`` / ``add_common_args``, the family's in its
recipe's ``add_args`` — so a new flag is one entry there and works here without a change.
"""
from __future__ import annotations

import argparse
import shlex
from os import PathLike
from pathlib import Path
from typing import Any

from genloom.errors import ConfigError


def family_parser(family: str) -> argparse.ArgumentParser:
    """The argument parser of ``genloom train FAMILY`` (also mounted as that subcommand by the CLI)."""
    from genloom.recipes import RECIPES, recipe

    if family not in RECIPES:
        raise ConfigError(f"unknown model family {family!r}; choose one of {', '.join(RECIPES)}")
    p = argparse.ArgumentParser(prog=f"genloom train {family}", description=recipe(family).HELP)
    add_family_args(p, family)
    return p


def add_family_args(p: argparse.ArgumentParser, family: str) -> None:
    from genloom.recipes import recipe
    from genloom.recipes.common import add_common_args

    rec = recipe(family)
    add_common_args(p, rec)
    rec.add_args(p)


def _actions(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in p._actions if a.dest not in ("help", argparse.SUPPRESS)}


def _convert(action: argparse.Action, name: str, value: Any) -> Any:
    """A Python value for option ``name``, checked as the CLI checks the flag (type, choices)."""
    if value is None:
        return None
    flag = action.option_strings[-1] if action.option_strings else name
    if action.nargs == 0:  # store_true / store_false
        if not isinstance(value, bool):
            raise ConfigError(f"option {name} ({flag}) is true or false, got {value!r}")
        return value if isinstance(action, argparse._StoreTrueAction) else not value
    typ = action.type
    if isinstance(value, (str, PathLike)) and callable(typ):
        try:
            value = typ(value if isinstance(value, str) else str(value))
        except (ValueError, TypeError, argparse.ArgumentTypeError) as e:
            raise ConfigError(f"option {name} ({flag}): {e}") from None
    elif typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    elif typ in (int, float) and (isinstance(value, bool) or not isinstance(value, typ)):
        raise ConfigError(f"option {name} ({flag}) must be {typ.__name__}, got {value!r}")
    if action.choices is not None and value not in action.choices:
        raise ConfigError(f"option {name} ({flag}) must be one of {', '.join(map(str, action.choices))}, "
                          f"got {value!r}")
    return value


def train_args(family: str, *, out: str | PathLike[str], **options: Any) -> argparse.Namespace:
    """The namespace ``genloom train FAMILY --out OUT …`` would parse, from Python values."""
    p = family_parser(family)
    ns = p.parse_args(["--out", str(out)])
    actions = _actions(p)
    aliases = {"progress": "no_progress"}  # progress=False is --no-progress
    for name, value in options.items():
        dest = aliases.get(name, name)
        if dest not in actions or dest in ("out",):
            valid = sorted(k for k in actions if k not in ("out", "no_progress")) + ["progress"]
            raise ConfigError(f"unknown option {name!r} for genloom.train({family!r}); valid: {', '.join(valid)}")
        if dest == "no_progress":
            value = not value if isinstance(value, bool) else value
        setattr(ns, dest, _convert(actions[dest], name, value))
    ns.family = family
    return ns


def resume_command(family: str, args: argparse.Namespace) -> str:
    """``genloom train FAMILY …`` with every option that differs from its default, plus ``--resume``."""
    p = family_parser(family)
    argv = ["train", family]
    for dest, action in _actions(p).items():
        v = getattr(args, dest, None)
        if dest == "resume" or not action.option_strings or v == action.default or v is None:
            continue
        flag = action.option_strings[-1]
        if action.nargs == 0:
            argv.append(flag)
        elif isinstance(v, tuple):
            argv += [flag, ",".join(map(str, v))]
        else:
            argv += [flag, str(v)]
    return "genloom " + shlex.join(argv) + " --resume"


def run_train(family: str, args: argparse.Namespace) -> dict[str, Any]:
    from genloom.recipes import recipe
    from genloom.recipes.common import run

    return run(recipe(family), args, resume_cmd=resume_command(family, args))


def train(family: str, *, out: str | PathLike[str], preset: str | None = None, epochs: int | None = None,
          steps: int | None = None, time_budget: float | None = None, batch_size: int | None = None,
          lr: float | None = None, seed: int | None = None, resume: bool | str | PathLike[str] = False, threads: int | None = None,
          progress: bool = False, **options: Any) -> dict[str, Any]:
    """Train a model of ``family`` ("vae", "gan", "lm", "classifier") into ``out``; return the run summary
    (``{"model": path of model.safetensors, "steps", "epochs", "train_seconds", …family's final metrics}``).

    ``options`` are the rest of ``genloom train FAMILY --help`` (``dataset="mnist"``, ``latent=32``,
    ``loss="wgan-gp"``, …), checked like the flags. Bad values raise :class:`genloom.errors.ConfigError`.
    """
    named = {"preset": preset, "epochs": epochs, "steps": steps, "time_budget": time_budget,
             "batch_size": batch_size, "lr": lr, "seed": seed, "resume": resume, "threads": threads,
             "progress": progress}
    args = train_args(family, out=out, **named, **options)
    return run_train(family, args)


def sample(model: str | PathLike[str], n: int = 64, *, seed: int = 0, labels: list[int] | None = None,
           backend: str = "auto", steps: int | None = None, guidance: float | None = None,
           sampler: str | None = None) -> Any:
    """``n`` images from an image model file, float32 (n, 28, 28) in [0, 1] — ``genloom.engine.load`` +
    ``sample``: the same seed gives the same images as ``genloom sample MODEL -n N --seed S -o x.npy``.
    ``steps`` / ``guidance`` / ``sampler``: flow models only (ODE steps, classifier-free guidance, euler | heun |
    shortcut)."""
    from genloom.engine import load

    flow = {k: v for k, v in (("steps", steps), ("guidance", guidance), ("sampler", sampler)) if v is not None}
    return load(Path(model), backend=backend).sample(n, seed=seed, labels=labels, **flow)


def generate(model: str | PathLike[str], prompt: str = "", *, max_new_tokens: int = 200, temperature: float = 0.8,
             top_k: int | None = None, top_p: float | None = None, seed: int = 0,
             stop: list[str] | None = None) -> str:
    """The continuation of ``prompt`` by an LM file (not including the prompt) — ``genloom sample MODEL --prompt``."""
    from genloom.engine import load

    return load(Path(model)).generate([prompt], max_new_tokens=max_new_tokens, temperature=temperature,
                                      top_k=top_k, top_p=top_p, seed=seed, stop=stop)[0]


def evaluate(model: str | PathLike[str], *, dataset: str | None = None, data: str | PathLike[str] | None = None,
             iwae_k: int = 100, seed: int = 0, text: str | PathLike[str] | None = None, fid: bool = False,
             classifier: str | PathLike[str] | None = None, fid_samples: int = 10_000, steps: int | None = None,
             guidance: float | None = None, sampler: str | None = None) -> dict[str, Any]:
    """``genloom eval MODEL --json`` as a dict: VAE test -ELBO / IWAE (+ FID), GAN FID, LM loss and bits/char."""
    from genloom.cli.eval import evaluate_file

    opt = lambda v: None if v is None else Path(v)
    return evaluate_file(Path(model), argparse.Namespace(
        dataset=dataset, data=opt(data), iwae_k=iwae_k, seed=seed, text=opt(text), fid=fid,
        classifier=opt(classifier), fid_samples=fid_samples, steps=steps, guidance=guidance, sampler=sampler))
