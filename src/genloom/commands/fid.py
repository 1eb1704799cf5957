"""`genloom eval` for GANs (FID), and the ``--fid`` addition for any image model (the VAE's evaluator calls it)."""
from __future__ import annotations

import argparse
from typing import Any

import torch

from genloom import export
from genloom.errors import GenloomError
from genloom.export import ModelFile


def _dataset(args: argparse.Namespace, header: ModelFile) -> str:
    return getattr(args, "dataset", None) or header.provenance.get("dataset") or "fashion-mnist"


def fid_result(args: argparse.Namespace, header: ModelFile, model: torch.nn.Module) -> dict[str, Any]:
    """{"fid", "fid_samples", "fid_classifier"} for ``model`` against the test split of its dataset."""
    from genloom.data.images import load_images
    from genloom.eval.fid import fid, find_classifier, load_classifier, real_stats

    n = getattr(args, "fid_samples", None) or 10_000
    if n < 2:
        raise GenloomError(f"--fid-samples must be ≥ 2 (10000 is the standard), got {n}")
    dataset = _dataset(args, header)
    cpath = find_classifier(getattr(args, "classifier", None), dataset=dataset)
    classifier = load_classifier(cpath, dataset=dataset)
    test = load_images(dataset, getattr(args, "data", None)).test
    value = fid(model, classifier, test.images, n_samples=n, seed=getattr(args, "seed", 0),
                real_stats=real_stats(cpath, classifier, test.images))
    return {"fid": value, "fid_samples": n, "fid_classifier": cpath.name}


def evaluate(args: argparse.Namespace, header: ModelFile) -> dict[str, Any]:
    """GAN: the FID of its samples (10,000 by default) against the test set."""
    model = export.load(header.path)
    return fid_result(args, header, model)
