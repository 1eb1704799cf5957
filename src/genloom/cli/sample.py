"""``genloom sample MODEL``: VAE/GAN images (.png grid or .npy array), LM text."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from genloom.core.requests import FLOW_ONLY, FLOW_SAMPLERS
from genloom.errors import GenloomError
from genloom.export import ModelFile
from genloom.options import add_device_options



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
    s.add_argument("--steps", type=int, default=None, help="flow: ODE steps (default: the file's)")
    s.add_argument("--sampler", choices=FLOW_SAMPLERS, default=None,
                   help="flow: euler | heun | shortcut (a shortcut model's learned steps) (default: the file's)")
    s.add_argument("--guidance", type=float, default=None,
                   help="flow: classifier-free guidance w (0 unconditional, 1 conditional, > 1 guided)")
    s.add_argument("--prompt", type=str, default=None, help="LM: the prompt text")
    s.add_argument("--max-new-tokens", type=int, default=200, help="LM: tokens to generate")
    s.add_argument("--temperature", type=float, default=0.8, help="LM: sampling temperature (0 = greedy)")
    s.add_argument("--top-k", type=int, default=None, help="LM: keep the k most likely tokens")
    s.add_argument("--top-p", type=float, default=None, help="LM: nucleus sampling mass")
    s.add_argument("--stop", action="append", default=None, help="LM: stop string (repeatable)")
    s.add_argument("--stream", action="store_true", help="LM: print tokens as they are generated")
    s.add_argument("--backend", default="auto", help="engine backend (genloom.engine.load): auto, or exact for "
                   "bit-reproducible fp32")
    add_device_options(s, note=" (the noise is drawn on the CPU, so a seed gives the same samples on every "
                       "device)")
    s.set_defaults(func=_cmd_sample)


def _cmd_sample(args: argparse.Namespace) -> int:
    from genloom.export import read_header

    h = read_header(args.model)
    if h.kind == "lm":
        return sample_text(args, h)
    if h.kind in ("vae", "gan", "flow"):
        return sample_images(args, h)
    raise GenloomError(f"`genloom sample` does not support models of kind {h.kind!r}")


# ---- images ----------------------------------------------------------------------------------------------------

def parse_labels(spec: str | None) -> list[int] | None:
    """``--labels 3`` or ``--labels 0,1,2`` → a list; the request schema (core/requests.py) checks it."""
    if spec is None:
        return None
    try:
        return [int(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        raise GenloomError(f"--labels must be integers like 3 or 0,1,2 — got {spec!r}") from None


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
    from genloom.engine import load

    # the engine's noise, backend and request schema (core/requests.py: the limits and error text of every
    # transport): the same images as genloom.engine.load(path).sample(n, seed=seed)
    flow = {k: getattr(args, k, None) for k in FLOW_ONLY if getattr(args, k, None) is not None}
    if flow and header.kind != "flow":
        raise GenloomError(f"--{next(iter(flow))} is for flow models; this model is of kind {header.kind}")
    eng = load(header.path, backend=args.backend, device=args.device, precision=args.precision)
    images = eng.sample(args.n, seed=args.seed, labels=parse_labels(args.labels), **flow)
    write_images(images, args.out)
    print(f"wrote {args.n} samples to {args.out}")
    return 0


# ---- text -------------------------------------------------------------------------------------------------------

def sample_text(args: argparse.Namespace, header: ModelFile) -> int:
    """Print the prompt and its continuation (one sample; ``-n`` applies to image models) through the engine and
    its request schema (the limits and error text of every transport). ``--stream`` prints characters as they
    are generated; ``-o FILE.txt`` also writes the text there."""
    from genloom.engine import load

    prompt = args.prompt if args.prompt is not None else ""
    if args.out is not None and args.out.suffix != ".txt":
        raise GenloomError(f"-o {args.out}: an LM writes text; use a .txt file name (or omit -o)")
    eng = load(header.path, backend=args.backend, device=args.device, precision=args.precision)
    kw = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_k": args.top_k,
          "top_p": args.top_p, "seed": args.seed, "stop": args.stop}
    if args.stream:
        pieces = eng.stream(prompt, **kw)
        first = next(pieces, "")  # validation errors come before any output
        sys.stdout.write(prompt + first)
        parts = [first]
        for piece in pieces:
            parts.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        text = prompt + "".join(parts)
    else:
        text = prompt + eng.generate([prompt], **kw)[0]
        print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    return 0
