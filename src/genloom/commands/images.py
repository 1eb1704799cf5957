"""`genloom sample` / `genloom eval` for image models (VAE; the GAN reuses sampling)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genloom import export
from genloom.errors import GenloomError
from genloom.export import ModelFile

MAX_SAMPLES = 100_000


def parse_labels(spec: str | None, n: int, num_classes: int) -> torch.Tensor | None:
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
    return torch.tensor(vals)


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


def sample(args: argparse.Namespace, header: ModelFile) -> int:
    if args.out is None:
        raise GenloomError("give -o OUT.png or -o OUT.npy")
    if args.out.suffix not in (".png", ".npy"):
        raise GenloomError(f"-o {args.out}: use a .png (image grid) or .npy (float32 array) file name")
    if not 1 <= args.n <= MAX_SAMPLES:
        raise GenloomError(f"-n must be between 1 and {MAX_SAMPLES}, got {args.n}")
    model = export.load(header.path)
    labels = parse_labels(args.labels, args.n, int(header.config.get("num_classes", 0)))
    with torch.inference_mode():
        imgs = model.generate(args.n, generator=torch.Generator().manual_seed(args.seed), labels=labels)
    write_images(imgs.float().numpy(), args.out)
    print(f"wrote {args.n} samples to {args.out}")
    return 0


def _test_split(args: argparse.Namespace, header: ModelFile):
    from genloom.data.images import load_images

    dataset = args.dataset or header.provenance.get("dataset") or "fashion-mnist"
    return load_images(dataset, args.data).test


def evaluate(args: argparse.Namespace, header: ModelFile) -> dict[str, Any]:
    from genloom.eval.elbo import evaluate_vae

    if args.iwae_k < 0:
        raise GenloomError("--iwae-k must be ≥ 0")
    model = export.load(header.path)
    result = evaluate_vae(model, _test_split(args, header), iwae_k=args.iwae_k, seed=args.seed)
    if getattr(args, "fid", False):  # the same FID evaluator as the GAN's, so the families compare
        from genloom.commands.fid import fid_result

        result.update(fid_result(args, header, model))
    return result
