"""``genloom train FAMILY --config run.toml``: every flag of ``genloom train FAMILY`` can come from a TOML file.

Keys are the flag names without the leading dashes (``batch-size`` or ``batch_size``); ``family`` names the
model family, so ``genloom train --config runs/x/config.toml`` needs no FAMILY. Flags given on the command line
win over the file. An unknown key is an error that names it (and the file).

Each run writes its resolved configuration to ``OUT/config.toml`` (``write_resolved``): the family, every flag
given, the training settings as resolved from preset and family defaults, and the family's own settings as the
preset sets them. ``genloom train --config runs/x/config.toml --out runs/y`` repeats the run (same per-step
losses; tested in tests/test_train_cli.py).

The file is turned into flags placed before the command line's own (``--key=value``), so argparse checks types
and choices exactly as for typed flags, and its last-one-wins rule makes the command line win.
"""
from __future__ import annotations

import argparse
import math
import sys
import tomllib
from pathlib import Path
from typing import Any

from genloom.errors import GenloomError

NOT_FLAGS = ("help", "config")  # dests that a file may not set


def _family_parsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """``genloom train``'s FAMILY -> sub-parser, found in the top-level parser."""
    for a in parser._subparsers._group_actions if parser._subparsers else []:  # type: ignore[union-attr]
        train = a.choices.get("train") if isinstance(a.choices, dict) else None
        if train is not None:
            for b in train._subparsers._group_actions if train._subparsers else []:
                if isinstance(b.choices, dict):
                    return dict(b.choices)
    return {}


def _config_path(argv: list[str]) -> tuple[str | None, list[str]]:
    """(the --config value, argv without it)."""
    out, path, i = [], None, 0
    while i < len(argv):
        a = argv[i]
        if a == "--config":
            if i + 1 >= len(argv):
                raise GenloomError("--config needs a file: genloom train [FAMILY] --config run.toml")
            path, i = argv[i + 1], i + 2
            continue
        if a.startswith("--config="):
            path = a.split("=", 1)[1]
        else:
            out.append(a)
        i += 1
    return path, out


def load(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        with open(p, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise GenloomError(f"--config {p}: no such file") from None
    except IsADirectoryError:
        raise GenloomError(f"--config {p}: is a directory; pass a .toml file (e.g. runs/x/config.toml)") from None
    except tomllib.TOMLDecodeError as e:
        raise GenloomError(f"--config {p}: not valid TOML ({e})") from None


def expand(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """``train [FAMILY] --config FILE …`` → ``train FAMILY <the file's flags> …``; other argv unchanged."""
    if not argv or argv[0] != "train" or not any(a == "--config" or a.startswith("--config=") for a in argv):
        return argv
    path, rest = _config_path(argv[1:])
    assert path is not None
    cfg = load(path)
    families = _family_parsers(parser)
    family = cfg.pop("family", None)
    given = rest[0] if rest and not rest[0].startswith("-") else None
    if given is None and family is None:
        raise GenloomError(f"--config {path}: name the family (`family = \"vae\"` in the file, or "
                           f"`genloom train FAMILY --config {path}`)")
    if given is not None and family is not None and given != family:
        raise GenloomError(f"--config {path} is for family {family!r}, not {given!r}")
    family = given or family
    if family not in families:
        raise GenloomError(f"--config {path}: unknown family {family!r}; choose one of {', '.join(families)}")
    flags = _flags(cfg, families[family], path, family)
    tail = rest[1:] if given is not None else rest
    return ["train", family, *flags, *tail]


def _flags(cfg: dict[str, Any], fp: argparse.ArgumentParser, path: str, family: str) -> list[str]:
    actions = {a.dest: a for a in fp._actions if a.option_strings and a.dest not in NOT_FLAGS}
    out: list[str] = []
    for key, value in cfg.items():
        dest = key.replace("-", "_")
        a = actions.get(dest)
        if a is None:
            raise GenloomError(f"--config {path}: unknown key {key!r} (not a flag of `genloom train {family}`; "
                               f"valid keys: family, {', '.join(sorted(actions))})")
        flag = max(a.option_strings, key=len)
        if a.nargs == 0:  # store_true
            if not isinstance(value, bool):
                raise GenloomError(f"--config {path}: {key} is true or false, not {value!r}")
            if value:
                out.append(flag)
        elif isinstance(a, argparse._StoreAction) and a.nargs == "?":  # e.g. --resume [CHECKPOINT]
            if value is True:
                out.append(flag)
            elif value not in (False, None):
                out.append(f"{flag}={value}")
        elif isinstance(value, list):
            if not isinstance(a, argparse._AppendAction):
                raise GenloomError(f"--config {path}: {key} takes one value, not a list")
            out += [f"{flag}={_text(v)}" for v in value]
        elif isinstance(value, dict):
            raise GenloomError(f"--config {path}: {key} takes a value, not a table")
        else:
            out.append(f"{flag}={_text(value)}")
    return out


def _text(v: Any) -> str:
    if isinstance(v, bool):
        raise GenloomError(f"a true/false value where the flag takes a value: {v!r}")
    return repr(v) if isinstance(v, float) else str(v)


# -- writing ------------------------------------------------------------------------------------------------
def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return ("inf" if v > 0 else "-inf") if math.isinf(v) else "nan" if math.isnan(v) else repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    s = str(v)
    return '"' + "".join(c if c.isprintable() and c not in '"\\' else f"\\u{ord(c):04x}" for c in s) + '"'


def write_resolved(path: Path, family: str, values: dict[str, Any]) -> Path:
    """Write ``OUT/config.toml``: ``family`` then each flag's value (None = unset, left out)."""
    lines = [f"# genloom train {family}: the resolved configuration of this run.",
             "# Repeat it with: genloom train --config THIS_FILE --out NEW_DIR (command-line flags win).",
             f"family = {_toml(family)}"]
    lines += [f"{k} = {_toml(v)}" for k, v in values.items() if v is not None]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def main_argv(argv: list[str] | None, parser: argparse.ArgumentParser) -> list[str]:
    """The hook ``genloom``'s main calls before parsing."""
    return expand(list(sys.argv[1:] if argv is None else argv), parser)
