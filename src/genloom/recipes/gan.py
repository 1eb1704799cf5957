"""``genloom train gan``: R3GAN (default), WGAN-GP or hinge + spectral norm on Fashion-MNIST / MNIST.

Defaults depend on ``--loss`` (``LOSS_DEFAULTS``); ``--preset gulrajani`` is the WGAN-GP authors' MNIST recipe.
The default loss is the one that measured best per wall-clock second here (docs/benchmarks.md, "GAN and FID"). One
Trainer step is one generator step on n_critic·B real images. At the end, the EMA generator and the raw one are
scored with the FID evaluator (on the validation split) and the better one is what the exported file samples from.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from genloom import export
from genloom.data.batches import ImageBatches
from genloom.errors import ConfigError
from genloom.models.gan import GAN, LOSSES, GANConfig
from genloom.recipes.common import Built
from genloom.recipes.images import add_dataset_args, load_splits, sample_grid_callback
from genloom.viz import save_grid

HELP = "GAN: R3GAN (default), WGAN-GP (Gulrajani et al. 2017) or hinge + spectral norm; MLP or conv nets"
DEFAULT_LOSS = "r3gan"
BASE: dict[str, Any] = {"epochs": 30, "schedule": "constant", "weight_decay": 0.0, "log_every": 20}
# per loss: (train-config defaults, model defaults); explicit flags and presets override both
LOSS_DEFAULTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "wgan-gp": ({"batch_size": 64, "lr": 2e-4, "betas": (0.5, 0.9)},
                {"arch": "conv", "dim": 32, "kernel": 4, "n_critic": 5, "gp_weight": 10.0}),
    "hinge": ({"batch_size": 64, "lr": 2e-4, "betas": (0.5, 0.9)},
              {"arch": "conv", "dim": 32, "kernel": 4, "n_critic": 2, "gp_weight": 0.0}),
    "r3gan": ({"batch_size": 64, "lr": 2e-4, "betas": (0.0, 0.99)},  # gen_norm batch: 30-min FID 16.3 vs 42.3
              {"arch": "conv", "dim": 32, "kernel": 4, "n_critic": 1, "gp_weight": 0.1, "gen_norm": "batch"}),
}
DEFAULTS: dict[str, Any] = {**BASE, **LOSS_DEFAULTS[DEFAULT_LOSS][0]}
MODEL_FIELDS = ("arch", "loss", "latent", "dim", "kernel", "critic_norm", "gen_norm", "n_critic", "gp_weight", "ema_kimg")
PRESETS: dict[str, dict[str, Any]] = {
    "gulrajani": {"_doc": "the WGAN-GP authors' MNIST recipe: conv DIM 64, kernel 5, batch 50, Adam 1e-4 "
                          "betas (0.5, 0.9), λ 10, n_critic 5, no EMA",
                  "loss": "wgan-gp", "arch": "conv", "dim": 64, "kernel": 5, "batch_size": 50, "lr": 1e-4,
                  "betas": (0.5, 0.9), "n_critic": 5, "gp_weight": 10.0, "ema_kimg": 0.0},
    "quick": {"_doc": "2 epochs, for a first look", "epochs": 2},
    # What `genloom quickstart` trains: the default R3GAN at 5x the learning rate, for a fixed number of steps
    # (so its FID does not depend on the machine's speed). docs/benchmarks.md, "Quickstart GAN".
    "quickstart": {"_doc": "genloom quickstart's GAN: the default R3GAN at lr 1e-3 for 1200 generator steps "
                           "(FID ≤ 60; docs/benchmarks.md)",
                   "lr": 1e-3, "steps": 1200, "epochs": None},
}


def _loss(args: argparse.Namespace) -> str:
    if getattr(args, "loss", None):
        return args.loss
    if getattr(args, "preset", None) and "loss" in PRESETS[args.preset]:
        return PRESETS[args.preset]["loss"]
    return DEFAULT_LOSS


def defaults_for(args: argparse.Namespace) -> dict[str, Any]:
    """Train-config defaults for this run's loss (used by ``recipes.common.train_config``)."""
    return {**BASE, **LOSS_DEFAULTS[_loss(args)][0]}


def add_args(p: argparse.ArgumentParser) -> None:
    add_dataset_args(p)
    g = p.add_argument_group("GAN (defaults depend on --loss; see docs/benchmarks.md)")
    g.add_argument("--loss", choices=LOSSES, default=None, help=f"objective (default {DEFAULT_LOSS})")
    g.add_argument("--arch", choices=("conv", "mlp"), default=None, help="generator/critic pair (default conv)")
    g.add_argument("--dim", type=int, default=None, help="conv: DIM channels (paper 64); mlp: hidden width")
    g.add_argument("--kernel", type=int, choices=(3, 4, 5), default=None, help="conv kernel size (paper 5)")
    g.add_argument("--latent", type=int, default=None, help="latent dimension (default 128)")
    g.add_argument("--n-critic", type=int, default=None, help="critic steps per generator step")
    g.add_argument("--gp-weight", type=float, default=None, help="wgan-gp: λ (10); r3gan: γ of R1 + R2")
    g.add_argument("--critic-norm", choices=("none", "layer"), default=None, help="critic normalization")
    g.add_argument("--gen-norm", choices=("none", "batch"), default=None,
                   help="conv generator normalization: batch (DCGAN's batch norm; the r3gan default) or none")
    g.add_argument("--ema-kimg", type=float, default=None,
                   help="EMA half-life cap in thousands of images (default 10; 0 = no EMA)")
    g.add_argument("--conditional", action="store_true", default=None, help="condition on the class label")
    g.add_argument("--classifier", type=Path, default=None,
                   help="FID classifier for choosing EMA vs raw weights at the end (default: the shipped one)")
    g.add_argument("--select-samples", type=int, default=5000,
                   help="samples per FID when choosing EMA vs raw weights at the end (0 = keep EMA)")


def config_from_args(args: argparse.Namespace, num_classes: int) -> GANConfig:
    loss = _loss(args)
    preset = PRESETS[args.preset] if args.preset else {}
    vals: dict[str, Any] = {"loss": loss, **LOSS_DEFAULTS[loss][1]}
    for name in MODEL_FIELDS:
        if name in preset:
            vals[name] = preset[name]
        if getattr(args, name, None) is not None:
            vals[name] = getattr(args, name)
    if args.conditional or preset.get("conditional"):
        vals["num_classes"] = num_classes
    return GANConfig(**vals)


def build(args: argparse.Namespace, tcfg) -> Built:
    splits = load_splits(args)
    cfg = config_from_args(args, num_classes=10)
    model = GAN(cfg)
    labels = torch.arange(100) % 10 if cfg.num_classes else None
    # one Trainer step = one generator step = n_critic real minibatches of batch_size images
    train = ImageBatches(splits.train, tcfg.batch_size * cfg.n_critic, drop_last=True)
    if len(train) == 0:
        raise ConfigError(f"the training set ({len(splits.train)} images) is smaller than one generator step "
                         f"(batch size × n_critic = {tcfg.batch_size * cfg.n_critic}); lower --batch-size")

    def after(path: Path, trainer) -> dict[str, Any]:
        return _choose_and_export(args, path, trainer, splits)

    return Built(model=model, train=train, val=None,
                 provenance={"dataset": splits.dataset, "train_images": len(splits.train),
                             "batch_size": tcfg.batch_size, "lr": tcfg.lr, "betas": list(tcfg.betas)},
                 on_epoch_end=[sample_grid_callback(100 if labels is not None else 64, labels=labels)],
                 after=after)


def _choose_and_export(args: argparse.Namespace, path: Path, trainer, splits) -> dict[str, Any]:
    """Score EMA and raw generator with the FID evaluator against the validation images; export the better one
    (the file's ``sample_from_ema``); write samples/final.png."""
    from genloom.errors import GenloomError
    from genloom.eval.fid import fid, find_classifier, load_classifier, real_stats

    model: GAN = trainer.model
    model.eval()
    out: dict[str, Any] = {}
    n = args.select_samples
    if n and n >= 2:
        try:
            cpath = find_classifier(args.classifier, dataset=splits.dataset)
            clf = load_classifier(cpath, dataset=splits.dataset)
        except GenloomError as e:
            print(f"genloom: FID skipped ({e})", file=sys.stderr)
            clf = None
        if clf is not None:
            # model selection uses the validation split; the test set is for `genloom eval` only
            real = real_stats(cpath, clf, splits.val.images)
            scores = {"raw": fid(model, clf, splits.val.images, n_samples=n, real_stats=real, ema=False)}
            if model.config.ema_kimg > 0:
                scores["ema"] = fid(model, clf, splits.val.images, n_samples=n, real_stats=real, ema=True)
            best = min(scores, key=scores.get)
            model.sample_from_ema.fill_(best == "ema")
            out = {f"val_fid_{k}": round(v, 3) for k, v in scores.items()}
            out.update(fid_samples=n, sampling=best)
            prov = {**export.read_header(path).provenance, **out}
            export.save(model, path, provenance=prov)
    with torch.no_grad():
        labels = torch.arange(100) % 10 if model.config.num_classes else None
        imgs = model.generate(100 if labels is not None else 64, generator=torch.Generator().manual_seed(1234),
                              labels=labels)
    save_grid(imgs.float().cpu().numpy(), Path(trainer.out) / "samples" / "final.png",
              nrow=10 if labels is not None else None)
    return out
