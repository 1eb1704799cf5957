"""``genloom train classifier``: the small CNN whose features genloom's FID uses (≥ 91 % on Fashion-MNIST).

The shipped ``genloom/assets/fmnist_classifier.safetensors`` was made with
``genloom train classifier --out runs/classifier`` (see docs/benchmarks.md, "GAN and FID").
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from genloom import export
from genloom.data.batches import ImageBatches
from genloom.models.classifier import Classifier, ClassifierConfig
from genloom.recipes.common import Built, preset_value
from genloom.recipes.images import add_dataset_args, load_splits

HELP = "small CNN classifier: the feature network for `genloom eval --fid`"
DEFAULTS: dict[str, Any] = {"epochs": 6, "batch_size": 128, "lr": 2e-3, "schedule": "cosine",
                            "min_lr_ratio": 0.02, "weight_decay": 1e-4}
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"_doc": "2 epochs, for a first look", "epochs": 2},
}


def add_args(p: argparse.ArgumentParser) -> None:
    add_dataset_args(p)
    g = p.add_argument_group("classifier")
    g.add_argument("--width", type=int, default=None, help="channels of the first conv (default 32)")
    g.add_argument("--dropout", type=float, default=None, help="dropout before both linear layers (default 0.3)")


def build(args: argparse.Namespace, tcfg) -> Built:
    from genloom.recipes import recipe

    rec = recipe("classifier")
    splits = load_splits(args)
    model = Classifier(ClassifierConfig(width=preset_value(args, rec, "width", 32),
                                        dropout=preset_value(args, rec, "dropout", 0.3)))

    def after(path: Path, trainer) -> dict[str, Any]:
        m = export.load(path)
        acc = round(m.accuracy(splits.test.images, splits.test.labels), 4)
        # the file carries its own test accuracy, so `genloom info` shows what the FID features are worth
        export.save(m, path, provenance={**export.read_header(path).provenance, "test_accuracy": acc})
        return {"test_accuracy": acc}

    return Built(
        model=model,
        train=ImageBatches(splits.train, tcfg.batch_size),
        val=ImageBatches(splits.val, 1000, shuffle=False),
        provenance={"dataset": splits.dataset, "train_images": len(splits.train)},
        after=after,
    )
