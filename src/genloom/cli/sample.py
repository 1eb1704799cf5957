"""``genloom sample MODEL``: VAE/GAN images (.png grid or .npy array), LM text."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genloom import export
from genloom.errors import GenloomError
from genloom.export import ModelFile

MAX_SAMPLES = 65_536  # the engine's limit per call (engine/base.py MAX_N)
MAX_NEW_TOKENS = 100_000


def register(sub: Any) -> None:
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


def _cmd_sample(args: argparse.Namespace) -> int:
    from genloom.export import read_header

    h = read_header(args.model)
    if h.kind == "lm":
        return sample_text(args, h)
    if h.kind in ("vae", "gan"):
        return sample_images(args, h)
    raise GenloomError(f"`genloom sample` does not support models of kind {h.kind!r}")


# ---- images ----------------------------------------------------------------------------------------------------

def parse_labels(spec: str | None, n: int, num_classes: int) -> list[int] | None:
    if spec is None:
        return None
    if not num_classes:
        raise GenloomError("--labels given but this model is not conditional")
    try:
        vals = [int(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        raise GenloomError(f"--labels must be integers like 3 or 0,1,2 — got {spec!r}") from None
    if len(vals) == 1:
        vals = vals * n
    if len(vals) != n:
        raise GenloomError(f"--labels has {len(vals)} values but -n is {n}; give one label or n labels")
    bad = [v for v in vals if not 0 <= v < num_classes]
    if bad:
        raise GenloomError(f"--labels value {bad[0]} out of range 0..{num_classes - 1}")
    return vals


def write_images(images: np.ndarray, out: Path) -> None:
    """.npy: float32 (N, 28, 28) in [0, 1]; .png: a grid."""
    from genloom.viz import save_grid

    arr = np.clip(np.asarray(images, dtype=np.float32).reshape(len(images), 28, 28), 0.0, 1.0)
    if out.suffix == ".npy":
        out.parent.mkdir(parents=True, exist_ok=True)
        np.save(out, arr)
    elif out.suffix == ".png":
        save_grid(arr, out)
    else:
        raise GenloomError(f"-o {out}: use a .png (image grid) or .npy (float32 array) file name")


def sample_images(args: argparse.Namespace, header: ModelFile) -> int:
    if args.out is None:
        raise GenloomError("give -o OUT.png or -o OUT.npy")
    if args.out.suffix not in (".png", ".npy"):
        raise GenloomError(f"-o {args.out}: use a .png (image grid) or .npy (float32 array) file name")
    if not 1 <= args.n <= MAX_SAMPLES:
        raise GenloomError(f"-n must be between 1 and {MAX_SAMPLES}, got {args.n}")
    from genloom.engine import load

    labels = parse_labels(args.labels, args.n, int(header.config.get("num_classes", 0)))
    # the engine's noise and backend: the same images as genloom.engine.load(path).sample(n, seed=seed)
    write_images(load(header.path).sample(args.n, seed=args.seed, labels=labels), args.out)
    print(f"wrote {args.n} samples to {args.out}")
    return 0


# ---- text -------------------------------------------------------------------------------------------------------

def _sampling(args: argparse.Namespace) -> dict[str, Any]:
    if not 0 <= args.max_new_tokens <= MAX_NEW_TOKENS:
        raise GenloomError(f"--max-new-tokens must be between 0 and {MAX_NEW_TOKENS}, got {args.max_new_tokens}")
    if args.temperature < 0:
        raise GenloomError(f"--temperature must be ≥ 0 (0 = greedy), got {args.temperature}")
    if args.top_k is not None and args.top_k < 1:
        raise GenloomError(f"--top-k must be ≥ 1, got {args.top_k}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise GenloomError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.stop is not None and not all(args.stop):
        raise GenloomError("--stop strings must not be empty")
    return {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_k": args.top_k,
            "top_p": args.top_p, "seed": args.seed, "stop": args.stop}


def sample_text(args: argparse.Namespace, header: ModelFile) -> int:
    """Print the prompt and its continuation (one sample; ``-n`` applies to image models).
    ``--stream`` prints characters as they are generated; ``-o FILE.txt`` also writes the text there."""
    from genloom.models.lm_generate import generate, stream

    kw = _sampling(args)
    prompt = args.prompt if args.prompt is not None else ""
    if args.out is not None and args.out.suffix != ".txt":
        raise GenloomError(f"-o {args.out}: an LM writes text; use a .txt file name (or omit -o)")
    model = export.load(header.path)
    model.encode(prompt)  # the error names a character outside the vocabulary, before any output
    with torch.no_grad():  # scoped: `genloom sample` may run in-process (quickstart, tests)
        if args.stream:
            sys.stdout.write(prompt)
            parts = []
            for piece in stream(model, prompt, **kw):
                parts.append(piece)
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
            text = prompt + "".join(parts)
        else:
            text = prompt + generate(model, [prompt], **kw)[0]
            print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    return 0
