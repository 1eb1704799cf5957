"""Pieces shared by the image families (VAE, GAN, classifier): dataset flags and the per-epoch sample grid."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from genloom.data.images import DATASETS, ImageSplits, load_images
from genloom.viz import grid, save_grid


def add_dataset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", choices=sorted(DATASETS), default="fashion-mnist", help="image dataset")
    p.add_argument("--data", type=Path, default=None,
                   help="directory with the four IDX files (default: $GENLOOM_DATA, then "
                        "/usr/share/datasets/<dataset>, then the download cache)")
    p.add_argument("--subset", type=int, default=None,
                   help="train on the first N training images only (smoke runs)")


def load_splits(args: argparse.Namespace) -> ImageSplits:
    splits = load_images(args.dataset, args.data)
    if args.subset:
        splits = ImageSplits(splits.dataset, splits.train.subset(slice(0, args.subset)), splits.val, splits.test)
    return splits


def sample_grid_callback(n: int = 64, *, seed: int = 1234, labels: torch.Tensor | None = None, **generate_kw: Any):
    """Write OUT/samples/epoch-NNN.png after every epoch, always from the same latent draws (and the grid to
    TensorBoard as ``samples``); ``generate_kw`` goes to the model's ``generate``."""

    def cb(trainer) -> None:
        model = trainer.model
        was_training = model.training
        model.eval()
        with torch.no_grad():
            imgs = model.generate(n, generator=torch.Generator().manual_seed(seed), labels=labels, **generate_kw)
        model.train(was_training)
        x = imgs.float().cpu().numpy()
        save_grid(x, Path(trainer.out) / "samples" / f"epoch-{trainer.epoch:03d}.png",
                  nrow=10 if labels is not None else None)
        trainer.log.image("samples", trainer.step, grid(x, nrow=10 if labels is not None else None))

    return cb
