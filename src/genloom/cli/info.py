"""``genloom info MODEL``: a model file's metadata as JSON."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

OWN_KEYS = ("genloom.kind", "genloom.format", "genloom.config", "genloom.provenance", "genloom.vocab")


def register(sub: Any) -> None:
    i = sub.add_parser("info", help="print a model file's metadata as JSON",
                       description="Print kind, config, provenance and tensor shapes of a model file.")
    i.add_argument("model", type=Path, help="a genloom .safetensors file")
    i.set_defaults(func=_cmd_info)


def _cmd_info(args: argparse.Namespace) -> int:
    from genloom.export import read_header

    h = read_header(args.model)
    print(json.dumps({"path": str(h.path), "kind": h.kind, "format": h.format, "config": h.config,
                      "provenance": h.provenance,
                      "extra_metadata": {k: v for k, v in h.metadata.items() if k not in OWN_KEYS},
                      "tensors": {k: {"dtype": d, "shape": s} for k, (d, s) in sorted(h.tensors.items())}},
                     indent=2))
    return 0
