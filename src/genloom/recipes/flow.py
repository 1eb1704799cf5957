"""``genloom train flow``: latent flow matching in two stages, within one budget, into one file.

Stage 1 trains the KL autoencoder with its patch critic (``models/autoencoder.py``) for ``--ae-frac`` of the time
budget (written to OUT/autoencoder/model.safetensors), or takes ``--autoencoder FILE`` from an earlier run.
The training set is then encoded once: the DiT trains on the stored posteriors (μ, σ), normalised per channel,
never touching the encoder again. Stage 2 trains the DiT with rectified flow for the rest of the budget and
exports OUT/model.safetensors: decoder + DiT (+ EMA) + latent normalisation + sampler settings. With
``--snapshot-every S`` a copy is exported every S seconds of the run (OUT/snapshots/), for FID-vs-time curves.

``--adv-frac F`` (label-free models) ends the run with the adversarial few-step stage (``models/flow.py``): the DiT
stage takes the first 1 − F of its share (exported to OUT/denoiser/model.safetensors), then ``--adv-pairs`` teacher
latents are generated and a copy of the network is fine-tuned as a ``--adv-steps``-step generator against a critic
on real images, for the last F; OUT/model.safetensors holds teacher and generator (``--sampler shortcut --steps
N`` runs the generator).

``--teacher FILE`` distils a trained flow file instead (reflow, ``models/flow.py``): no data and no autoencoder;
``--distill-pairs`` noise → latent pairs are generated with the teacher's sampler and guidance (counted in the
budget, like the autoencoder stage), the student starts from the teacher's (EMA) weights and is trained on the
pairs, and OUT/model.safetensors is a flow file like any other whose default sampler is Euler with
``--distill-steps`` steps and guidance 1 (the teacher's guidance is in its conditional velocity).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, cast

import torch

from genloom import export
from genloom.data.batches import ImageBatches
from genloom.errors import GenloomError
from genloom.models.autoencoder import Autoencoder, AutoencoderConfig
from genloom.models.flow import SAMPLERS, AdversarialBatch, FlowConfig, FlowModel, ReflowBatch
from genloom.recipes.common import Built, preset_value
from genloom.recipes.images import add_dataset_args, load_splits, sample_grid_callback
from genloom.training.trainer import TrainConfig, Trainer
from genloom.viz import save_grid

HELP = "latent flow matching: KL autoencoder + patch critic, then a class-conditional DiT (rectified flow)"
# the DiT stage's train config; the autoencoder stage has its own (AE_DEFAULTS)
DEFAULTS: dict[str, Any] = {"time_budget": 1800.0, "batch_size": 64, "lr": 2e-3, "betas": (0.9, 0.99),
                            "schedule": "wsd", "warmup_steps": 100, "decay_frac": 0.3, "min_lr_ratio": 0.0,
                            "weight_decay": 0.0, "grad_clip": 1.0, "log_every": 20}
# --unconditional: the label-free model's measured best (docs/benchmarks.md, 30-minute runs side by side): a larger
# batch and LR for the DiT and 15 % of the budget for the autoencoder — FID 15.30 → 12.27 (Heun 4) on one CPU
UNCONDITIONAL_DEFAULTS: dict[str, Any] = {**DEFAULTS, "batch_size": 128, "lr": 3e-3}
UNCONDITIONAL_AE_FRAC = 0.15
# ... and 8 Heun steps (16 evaluations) by default: FID 12.27 → 10.04, 17.40 → 12.50 and 11.01 → 9.69 against 4 steps
# on three CPUs (docs/benchmarks.md) — the label-free model needs the finer ODE steps that guidance gives the other
UNCONDITIONAL_SAMPLE_STEPS = 8
# ... and it is a shortcut model with 6 step-size levels (1 … 32 steps): in 30-minute runs side by side its 8-step
# Heun FID was no worse (9.61 against a plain model's 9.90) and `--sampler shortcut --steps 4` scored 19.54 where
# 4 Euler steps of the plain model scored 32.56 (8 levels: 22.65; docs/benchmarks.md)
UNCONDITIONAL_SHORTCUT_LEVELS = 6
# ... and its last 30 % (of the DiT's share) train the adversarial 4-step generator, which the file samples with by
# default: in 30 minutes on one CPU, 4 evaluations scored FID 10.03 where a plain run's 8 Heun steps (16
# evaluations) scored 15.38 and its 4 shortcut steps 28.77 (docs/benchmarks.md, "Adversarial few-step generator")
UNCONDITIONAL_ADV_FRAC = 0.3
AE_DEFAULTS: dict[str, Any] = {"batch_size": 32, "betas": (0.9, 0.99), "schedule": "wsd",
                               "decay_frac": 0.2, "weight_decay": 0.0}
# reflow distillation (--teacher): a fine-tune from the teacher's weights, shorter and at a lower LR
DISTILL_DEFAULTS: dict[str, Any] = {**DEFAULTS, "time_budget": 600.0, "lr": 5e-4, "warmup_steps": 50}
DISTILL_FLAGS: dict[str, tuple[Any, Any, str]] = {
    "distill_pairs": (int, 20_000, "noise → latent pairs to generate with the teacher"),
    "distill_steps": (int, 1, "the student's default Euler steps (= network evaluations per sample; 1 measured best)"),
    "teacher_steps": (int, None, "the teacher's ODE steps for the pairs (default: the teacher file's)"),
    "teacher_guidance": (float, None, "the teacher's guidance w for the pairs (default: the teacher file's)"),
    "teacher_guidance_interval": (str, None, "the teacher's guidance interval LO,HI for the pairs (default: the "
                                  "teacher file's)"),
}
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"_doc": "3 minutes in all, for a first look", "time_budget": 180.0},
    # sampling cost per image: DiT 4 × 64 over 4 tokens (4×4 latent patches) ≈ 0.8 M multiply-adds per evaluation,
    # decoder (width 16) ≈ 1.8 M — with a 1-step reflow student below the default GAN generator's 4.1 M (the default
    # flow model: 13 M per evaluation + 7 M). Measured (docs/benchmarks.md): 1.66x the GAN's time for 64 images
    # at FID 6.37, 95.9 % class accuracy; patch 2 (16 tokens) was 2.6–2.7x at FID 4.73.
    "fast": {"_doc": "a 4×64 DiT over 4×4 latent patches and a width-16 autoencoder, 10 minutes: distil it "
                     "(--teacher) to sample in one evaluation at under 2x the GAN's time",
             "time_budget": 600.0, "dim": 64, "ae_dim": 16, "patch": 4},
}
MODEL_FLAGS: dict[str, tuple[Any, Any, str]] = {  # flag name -> (type, default, help)
    "dim": (int, 128, "DiT width"),
    "depth": (int, 4, "DiT blocks"),
    "heads": (int, 4, "DiT attention heads"),
    "patch": (int, 2, "DiT patch size over the 7×7 latent (2: padded to 8×8, 16 tokens)"),
    "label_drop": (float, 0.1, "probability of dropping the class in training (classifier-free guidance)"),
    "ema_kimg": (float, 10.0, "EMA half-life cap in thousands of samples (0 = no EMA)"),
    "sampler": (str, "heun", f"default ODE sampler: {', '.join(SAMPLERS)}"),
    "sample_steps": (int, 4, "default ODE steps"),
    "guidance": (float, 4.0, "default guidance w (0 unconditional, 1 conditional, > 1 guided)"),
    "time_shift": (float, 1.0, "sampling time shift s (> 1: more steps near noise)"),
    "guidance_t_min": (float, 0.0, "default guidance interval: guidance applies for t in [min, max] (t = 1 noise), "
                       "the conditional velocity (w = 1) outside"),
    "guidance_t_max": (float, 0.5, "default guidance interval: upper end"),
    "t_std": (float, 1.0, "logit-normal training time: std of the normal"),
    "shortcut_levels": (int, 0, "train a shortcut model (few steps learned in the same run) with this many "
                        "step-size levels: 6 = 1, 2, 4, …, 32 steps (sample with --sampler shortcut); 0 = off (the default "
                        "with --unconditional: 6)"),
}
# the adversarial few-step stage (--adv-frac > 0); its train config: ADV_DEFAULTS
ADV_FLAGS: dict[str, tuple[Any, Any, str]] = {
    "adv_frac": (float, 0.0, "fraction of the DiT stage's time (or steps) for the adversarial few-step stage at its "
                 "end (label-free models; 0 = off; with --unconditional: 0.3)"),
    "adv_steps": (int, 4, "the adversarial generator's shortcut steps (= network evaluations per sample)"),
    "adv_loss_weight": (float, 1.0, "weight of the critic's loss against the regression on the teacher's latents"),
    "adv_grad_steps": (int, 1, "backpropagate through the last this many generator steps (1 measured as good as "
                       "all 4, at 1.5x the steps)"),
    "adv_pairs": (int, 4096, "noise → latent pairs from the teacher (8-step Heun) for the regression (8192: no "
                  "better, 2x the time)"),
    "adv_lr": (float, 2e-4, "learning rate of the generator and the critic (Adam, betas (0, 0.99))"),
}
ADV_DEFAULTS: dict[str, Any] = {"batch_size": 64, "schedule": "constant", "warmup_steps": 0, "weight_decay": 0.0,
                                "grad_clip": 1.0}
AE_FLAGS: dict[str, tuple[Any, Any, str]] = {
    "latent_channels": (int, 4, "autoencoder latent channels C (latent C×7×7)"),
    "ae_dim": (int, 32, "autoencoder width"),
    "kl_weight": (float, 1e-3, "weight of the KL term"),
    "adv_weight": (float, 0.5, "weight of the patch critic's generator loss (0 = no adversarial loss)"),
    "adv_start": (int, 400, "autoencoder steps before the critic joins"),
    "ae_frac": (float, 0.3, "fraction of the time budget for the autoencoder stage"),
    "ae_epochs": (int, 3, "autoencoder epochs when the run is given in --epochs/--steps, not a time budget"),
    "ae_lr": (float, 2e-3, "autoencoder learning rate"),
}


def add_args(p: argparse.ArgumentParser) -> None:
    add_dataset_args(p)
    g = p.add_argument_group("flow: autoencoder stage")
    g.add_argument("--autoencoder", type=Path, default=None,
                   help="use this trained autoencoder file (OUT/autoencoder/model.safetensors of an earlier run) "
                        "instead of training one; the whole budget goes to the DiT")
    for name, (typ, d, help_) in AE_FLAGS.items():
        g.add_argument("--" + name.replace("_", "-"), type=typ, default=None, help=f"{help_} (default {d})")
    g = p.add_argument_group("flow: DiT stage and sampler")
    for name, (typ, d, help_) in MODEL_FLAGS.items():
        kw: dict[str, Any] = {"choices": SAMPLERS} if name == "sampler" else {}
        g.add_argument("--" + name.replace("_", "-"), type=typ, default=None, help=f"{help_} (default {d})", **kw)
    g.add_argument("--unconditional", action="store_true",
                   help=f"no class conditioning (its defaults, measured best for it: batch size "
                        f"{UNCONDITIONAL_DEFAULTS['batch_size']}, lr {UNCONDITIONAL_DEFAULTS['lr']:g}, "
                        f"ae-frac {UNCONDITIONAL_AE_FRAC}, sample-steps {UNCONDITIONAL_SAMPLE_STEPS}, shortcut-levels "
                        f"{UNCONDITIONAL_SHORTCUT_LEVELS}, adv-frac {UNCONDITIONAL_ADV_FRAC})")
    g.add_argument("--snapshot-every", type=float, default=None,
                   help="export OUT/snapshots/t-SECONDS.safetensors every this many seconds of the run")
    g = p.add_argument_group("flow: adversarial few-step stage (--adv-frac > 0, label-free models)")
    for name, (typ, d, help_) in ADV_FLAGS.items():
        g.add_argument("--" + name.replace("_", "-"), type=typ, default=None, help=f"{help_} (default {d})")
    g = p.add_argument_group("flow: few-step distillation (reflow) of a trained flow file; defaults "
                             + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in DISTILL_DEFAULTS.items()
                                         if k in ("time_budget", "lr", "warmup_steps")))
    g.add_argument("--teacher", type=Path, default=None,
                   help="distil this flow model file (OUT/model.safetensors of an earlier run) into a few-step "
                        "student with the same architecture; no data or autoencoder stage")
    for name, (typ, d, help_) in DISTILL_FLAGS.items():
        default = f" (default {d})" if d is not None else ""
        g.add_argument("--" + name.replace("_", "-"), type=typ, default=None, help=help_ + default)


def defaults_for(args: argparse.Namespace) -> dict[str, Any]:
    """The DiT stage's training defaults (the label-free model's with --unconditional), or the distillation's
    with --teacher."""
    if getattr(args, "teacher", None) is not None:
        return DISTILL_DEFAULTS
    return UNCONDITIONAL_DEFAULTS if getattr(args, "unconditional", False) else DEFAULTS


def ae_frac(args: argparse.Namespace) -> float:
    """The autoencoder stage's share of the time budget: flag > preset > default (15 % with --unconditional)."""
    default = UNCONDITIONAL_AE_FRAC if getattr(args, "unconditional", False) else AE_FLAGS["ae_frac"][1]
    return float(preset_value(args, sys.modules[__name__], "ae_frac", default))


def _opt(args: argparse.Namespace, name: str, table: dict[str, tuple[Any, Any, str]]) -> Any:
    return preset_value(args, sys.modules[__name__], name, table[name][1])


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    """The DiT and sampler settings (MODEL_FLAGS): flag > preset > default (with --unconditional: 8 sampler steps
    and a shortcut model of 6 levels)."""
    opts = {k: _opt(args, k, MODEL_FLAGS) for k in MODEL_FLAGS}
    if getattr(args, "unconditional", False):
        opts["sample_steps"] = preset_value(args, sys.modules[__name__], "sample_steps", UNCONDITIONAL_SAMPLE_STEPS)
        opts["shortcut_levels"] = preset_value(args, sys.modules[__name__], "shortcut_levels",
                                               UNCONDITIONAL_SHORTCUT_LEVELS)
    return opts


class LatentBatches:
    """(μ, σ, y) batches of the encoded training set: μ, σ (B, C, 7, 7) normalised, y (B,)."""

    def __init__(self, mu: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor, batch_size: int) -> None:
        self.mu, self.sigma, self.labels, self.batch_size = mu, sigma, labels, batch_size

    def __len__(self) -> int:
        return len(self.mu) // self.batch_size  # drop the last partial batch

    def epoch(self, generator: torch.Generator | None = None, start: int = 0) -> Iterator:
        order = torch.randperm(len(self.mu), generator=generator)
        for b in range(start, len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield self.mu[idx], self.sigma[idx], self.labels[idx]


def train_autoencoder(args: argparse.Namespace, tcfg: TrainConfig, splits, budget: float | None) -> Autoencoder:
    cfg = AutoencoderConfig(channels=_opt(args, "latent_channels", AE_FLAGS), dim=_opt(args, "ae_dim", AE_FLAGS),
                            kl_weight=_opt(args, "kl_weight", AE_FLAGS), adv_weight=_opt(args, "adv_weight", AE_FLAGS),
                            adv_start=_opt(args, "adv_start", AE_FLAGS))
    length = {"time_budget": budget} if budget else {"epochs": _opt(args, "ae_epochs", AE_FLAGS)}
    acfg = TrainConfig(out=str(Path(tcfg.out) / "autoencoder"), **AE_DEFAULTS, lr=_opt(args, "ae_lr", AE_FLAGS),
                       log_every=tcfg.log_every, seed=tcfg.seed, progress=tcfg.progress,
                       precision=tcfg.precision, device=tcfg.device, tensorboard=tcfg.tensorboard, **length)
    model = Autoencoder(cfg)
    # no validation pass: it would cost a forward over the validation split of this stage's few minutes
    trainer = Trainer(model, acfg, ImageBatches(splits.train, acfg.batch_size, drop_last=True), None,
                      provenance={"dataset": splits.dataset, "train_images": len(splits.train), "stage": "autoencoder"})
    path = trainer.fit()
    return cast(Autoencoder, export.load(path))


def _load_kind(path: Path, kind: str, flag: str, what: str, file: str) -> Any:
    """The model in ``path`` if its kind is ``kind``, else an error naming the flag and the file to pass."""
    info = export.read_header(path)
    if info.kind != kind:
        raise GenloomError(f"{flag}{path}: is a {info.kind!r} model, not {what}; pass {file} of an earlier "
                           f"`genloom train flow` run")
    return export.load(path)


def load_autoencoder(path: Path) -> Autoencoder:
    return cast(Autoencoder, _load_kind(path, "autoencoder", "", "an autoencoder", "OUT/autoencoder/model.safetensors"))


@torch.inference_mode()
def encode_dataset(ae: Autoencoder, images: torch.Tensor, *, batch_size: int = 1000
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, 28, 28) → posterior μ, σ, each (N, C, 7, 7)."""
    mus, sigmas = [], []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].float().div(255.0).unsqueeze(1)  # (b, 1, 28, 28)
        mu, logvar = ae.encode(x)
        mus.append(mu)
        sigmas.append(torch.exp(0.5 * logvar))
    return torch.cat(mus), torch.cat(sigmas)


def build(args: argparse.Namespace, tcfg: TrainConfig) -> Built:
    if getattr(args, "teacher", None) is not None:
        return build_distill(args, tcfg)
    given = [n for n in DISTILL_FLAGS if getattr(args, n, None) is not None]
    if given:
        raise GenloomError(f"--{given[0].replace('_', '-')} applies to distillation only: add --teacher FILE")
    t_start = time.monotonic()
    adv = adversarial_options(args)  # bad flags fail here, before any training
    splits = load_splits(args)
    budget = tcfg.time_budget
    if args.autoencoder is not None:
        ae = load_autoencoder(args.autoencoder)
    else:
        frac = ae_frac(args)
        if budget and not 0 < frac < 1:
            raise GenloomError(f"--ae-frac must be in (0, 1), got {frac}")
        ae = train_autoencoder(args, tcfg, splits, budget * frac if budget else None)
    ae.eval()
    mu, sigma = encode_dataset(ae, splits.train.images)  # (N, C, 7, 7) each
    # per-channel statistics of posterior samples z = μ + σε: E z = E μ, Var z = Var μ + E σ²
    mean = mu.mean((0, 2, 3))
    std = (mu.var((0, 2, 3)) + sigma.pow(2).mean((0, 2, 3))).sqrt()
    c = ae.config
    num_classes = 0 if args.unconditional else 10
    cfg = FlowConfig(ae_channels=c.channels, ae_dim=c.dim, num_classes=num_classes,
                     **model_options(args))
    model = FlowModel(cfg)
    model.decoder.load_state_dict(ae.decoder.state_dict())
    model.latent_mean.copy_(mean)
    model.latent_std.copy_(std)
    norm_mu = (mu - mean[:, None, None]) / std[:, None, None]
    norm_sigma = sigma / std[:, None, None]
    train = LatentBatches(norm_mu.contiguous(), norm_sigma.contiguous(), splits.train.labels, tcfg.batch_size)
    stage1 = time.monotonic() - t_start
    dit_cfg = tcfg
    if budget:
        left = budget - stage1
        if left < 1:
            raise GenloomError(f"the autoencoder stage used {stage1:.0f} s of the {budget:g} s budget; "
                               f"lower --ae-frac or raise --time-budget")
        dit_cfg = dataclasses.replace(tcfg, time_budget=left)
    labels = torch.arange(100) % 10 if num_classes else None
    callbacks = [sample_grid_callback(100 if labels is not None else 64, labels=labels)]
    every = getattr(args, "snapshot_every", None)
    on_step = _snapshotter(Path(tcfg.out), every, t_start) if every else None
    prov = {"dataset": splits.dataset, "train_images": len(splits.train), "batch_size": tcfg.batch_size,
            "lr": tcfg.lr, "autoencoder": str(args.autoencoder) if args.autoencoder else "trained in this run",
            "autoencoder_seconds": round(stage1, 1)}

    if adv:
        return _denoiser_then_adversarial(model, train, splits.train.images, adv, dit_cfg, t_start, prov,
                                          callbacks, on_step, t_start + budget if budget else None)
    after = _finish(t_start, labels, {"autoencoder_seconds": round(stage1, 1)})
    return Built(model=model, train=train, val=None, provenance=prov, on_epoch_end=callbacks, after=after,
                 train_config=dit_cfg, on_step=on_step)


class AdversarialBatches:
    """``AdversarialBatch`` batches: the teacher's pairs shuffled, each with a random batch of real images."""

    def __init__(self, images: torch.Tensor, noise: torch.Tensor, target: torch.Tensor, batch_size: int) -> None:
        self.images, self.noise, self.target, self.batch_size = images, noise, target, batch_size

    def __len__(self) -> int:
        return len(self.noise) // self.batch_size

    def epoch(self, generator: torch.Generator | None = None, start: int = 0) -> Iterator:
        order = torch.randperm(len(self.noise), generator=generator)
        for b in range(start, len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            real = torch.randint(0, len(self.images), (self.batch_size,), generator=generator)
            yield AdversarialBatch(self.images[real].float().div(255.0).unsqueeze(1), self.noise[idx],
                                   self.target[idx])


def adversarial_options(args: argparse.Namespace) -> dict[str, Any] | None:
    """The adversarial stage's options (ADV_FLAGS), checked; None when --adv-frac is 0 (the default of a label-free
    shortcut model: UNCONDITIONAL_ADV_FRAC)."""
    adv = {n: _opt(args, n, ADV_FLAGS) for n in ADV_FLAGS}
    if args.unconditional and model_options(args)["shortcut_levels"]:
        adv["adv_frac"] = preset_value(args, sys.modules[__name__], "adv_frac", UNCONDITIONAL_ADV_FRAC)
    frac = float(adv["adv_frac"])
    if not frac:
        given = [n for n in ADV_FLAGS if n != "adv_frac" and getattr(args, n, None) is not None]
        if given:
            raise GenloomError(f"--{given[0].replace('_', '-')} applies to the adversarial stage: add --adv-frac F")
        return None
    if not 0 < frac < 1:
        raise GenloomError(f"--adv-frac must be in [0, 1), got {frac}")
    if not args.unconditional:
        raise GenloomError("--adv-frac trains a label-free few-step generator: add --unconditional")
    if adv["adv_pairs"] < ADV_DEFAULTS["batch_size"] or adv["adv_lr"] <= 0:
        raise GenloomError(f"--adv-pairs must be ≥ {ADV_DEFAULTS['batch_size']} and --adv-lr > 0")
    try:
        FlowConfig(num_classes=0, **model_options(args), adv_steps=adv["adv_steps"],
                   adv_loss_weight=adv["adv_loss_weight"], adv_grad_steps=adv["adv_grad_steps"])
    except ValueError as e:
        raise GenloomError(f"--adv-steps {adv['adv_steps']}: {e} (--shortcut-levels sets the step counts)") from None
    return adv


def _denoiser_then_adversarial(model: FlowModel, train: LatentBatches, images: torch.Tensor, adv: dict[str, Any],
                               dit_cfg: TrainConfig, t_start: float, prov: dict[str, Any], callbacks: list,
                               on_step: Callable | None, deadline: float | None) -> Built:
    """Train the DiT for the first 1 − adv_frac of its share here (into OUT/denoiser), then return the adversarial
    stage: the teacher's pairs, the generator initialised from the teacher, the rest of the budget."""
    frac, out = float(adv["adv_frac"]), Path(dit_cfg.out)
    # the file samples with the generator by default: it scored better than the teacher's 8 Heun steps
    cfg = dataclasses.replace(model.config, adv_steps=adv["adv_steps"], adv_loss_weight=adv["adv_loss_weight"],
                              adv_grad_steps=adv["adv_grad_steps"], sampler="shortcut", sample_steps=adv["adv_steps"])
    budget = dit_cfg.time_budget
    steps = dit_cfg.steps if dit_cfg.steps is not None else None if budget else \
        (dit_cfg.epochs or 1) * len(train)
    stage2 = dataclasses.replace(dit_cfg, out=str(out / "denoiser"),
                                 **({"time_budget": budget * (1 - frac)} if budget else
                                    {"steps": max(1, round(steps * (1 - frac))), "epochs": None}))
    trainer = Trainer(model, stage2, train, None, provenance={**prov, "stage": "denoiser"},
                      on_epoch_end=callbacks, on_step=on_step)
    trainer.fit()
    teacher = model.eval()
    t_pairs = time.monotonic()
    gen = torch.Generator().manual_seed(dit_cfg.seed)
    pairs = teacher.reflow_pairs(adv["adv_pairs"], generator=gen, uncond_frac=1.0, sampler="heun", steps=8,
                                 guidance=0.0)
    pair_seconds = time.monotonic() - t_pairs
    student = FlowModel(cfg)
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(("adv", "critic")) for k in missing), (missing, unexpected)
    student.start_adversarial()
    length: dict[str, Any] = {"epochs": None, "steps": None, "time_budget": None}
    if deadline is not None:  # the rest of the run's budget, whatever the stages before overran or saved
        length["time_budget"] = max(1.0, deadline - time.monotonic())
    else:
        length["steps"] = max(1, steps - stage2.steps)
    stage3 = dataclasses.replace(dit_cfg, **ADV_DEFAULTS, lr=adv["adv_lr"], **length)
    prov = {**prov, "denoiser": str(out / "denoiser" / "model.safetensors"), "denoiser_steps": trainer.step,
            "adversarial": {k: adv[k] for k in ADV_FLAGS}, "pair_seconds": round(pair_seconds, 1)}
    return Built(model=student, train=AdversarialBatches(images, pairs.noise, pairs.target, stage3.batch_size),
                 val=None, provenance=prov, on_epoch_end=[sample_grid_callback(64, sampler="shortcut",
                                                                                   steps=cfg.adv_steps)],
                 after=_finish(t_start, None, {"pair_seconds": round(pair_seconds, 1)}), train_config=stage3,
                 on_step=on_step)


class PairBatches:
    """Shuffled ``ReflowBatch`` batches of the teacher's pairs."""

    def __init__(self, pairs: ReflowBatch, batch_size: int) -> None:
        self.pairs, self.batch_size = pairs, batch_size

    def __len__(self) -> int:
        return len(self.pairs.noise) // self.batch_size

    def epoch(self, generator: torch.Generator | None = None, start: int = 0) -> Iterator:
        order = torch.randperm(len(self.pairs.noise), generator=generator)
        for b in range(start, len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield ReflowBatch(*(x[idx] for x in self.pairs))


def load_teacher(path: Path) -> FlowModel:
    return cast(FlowModel, _load_kind(path, "flow", "--teacher ", "a flow model", "OUT/model.safetensors"))


def _interval(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise GenloomError(f"--teacher-guidance-interval must be LO,HI (e.g. 0,0.75), got {text!r}") from None
    if not 0 <= lo <= hi <= 1:
        raise GenloomError(f"--teacher-guidance-interval must satisfy 0 ≤ LO ≤ HI ≤ 1, got {text!r}")
    return lo, hi


def build_distill(args: argparse.Namespace, tcfg: TrainConfig) -> Built:
    """Reflow: pairs from the teacher, then the student (the teacher's weights) trained on them."""
    t_start = time.monotonic()
    clash = [n for n in (*MODEL_FLAGS, *AE_FLAGS, *ADV_FLAGS, "autoencoder", "snapshot_every") if getattr(args, n, None)
             is not None] + (["unconditional"] if args.unconditional else [])
    if clash:
        raise GenloomError(f"--{clash[0].replace('_', '-')} does not apply with --teacher: the student copies the "
                           f"teacher's architecture and autoencoder (sampler: --distill-steps)")
    opt = {n: preset_value(args, sys.modules[__name__], n, d) for n, (_, d, _) in DISTILL_FLAGS.items()}
    if opt["distill_pairs"] < tcfg.batch_size or opt["distill_steps"] < 1:
        raise GenloomError(f"--distill-pairs must be ≥ the batch size ({tcfg.batch_size}) and --distill-steps ≥ 1")
    if (opt["teacher_steps"] is not None and opt["teacher_steps"] < 1) or (opt["teacher_guidance"] or 0) < 0:
        raise GenloomError("--teacher-steps must be ≥ 1 and --teacher-guidance ≥ 0")
    teacher = load_teacher(args.teacher).eval()
    tc = teacher.config
    if tc.distill_guidance > 0:
        raise GenloomError(f"--teacher {args.teacher}: is already a distilled student; distil its teacher")
    t_steps = tc.sample_steps if opt["teacher_steps"] is None else opt["teacher_steps"]
    t_w = tc.guidance if opt["teacher_guidance"] is None else opt["teacher_guidance"]
    interval = (tc.guidance_t_min, tc.guidance_t_max)
    if opt["teacher_guidance_interval"] is not None:
        interval = _interval(opt["teacher_guidance_interval"])
    gen = torch.Generator().manual_seed(tcfg.seed)
    pairs = teacher.reflow_pairs(opt["distill_pairs"], generator=gen, steps=t_steps, guidance=t_w,
                                 guidance_interval=interval)
    cond_w = t_w if tc.num_classes else 0.0
    cfg = dataclasses.replace(tc, sampler="euler", sample_steps=opt["distill_steps"],
                              guidance=1.0 if tc.num_classes else 0.0, guidance_t_min=0.0, guidance_t_max=1.0,
                              distill_guidance=cond_w if cond_w > 0 else 0.0)
    student = FlowModel(cfg)
    state = teacher.state_dict()
    src = "ema." if bool(teacher.sample_from_ema) else "dit."
    for k in list(state):  # the student and its EMA both start from the teacher's sampling network
        if k.startswith(("dit.", "ema.")):
            state[k] = state[src + k.split(".", 1)[1]]
    state["ema_images"] = torch.zeros((), dtype=torch.float64)
    student.load_state_dict(state)
    stage1 = time.monotonic() - t_start
    dit_cfg = tcfg
    budget = tcfg.time_budget
    if budget:
        if budget - stage1 < 1:
            raise GenloomError(f"generating the pairs used {stage1:.0f} s of the {budget:g} s budget; "
                               f"lower --distill-pairs or raise --time-budget")
        dit_cfg = dataclasses.replace(tcfg, time_budget=budget - stage1)
    labels = torch.arange(100) % 10 if tc.num_classes else None
    prov = {"teacher": str(args.teacher), "teacher_provenance": export.read_header(args.teacher).provenance,
            "distill": "reflow", "pairs": opt["distill_pairs"], "teacher_sampler": tc.sampler,
            "teacher_steps": t_steps, "teacher_guidance": t_w,
            "teacher_guidance_interval": list(interval),
            "pair_seconds": round(stage1, 1), "batch_size": tcfg.batch_size, "lr": tcfg.lr}

    return Built(model=student, train=PairBatches(pairs, tcfg.batch_size), val=None, provenance=prov,
                 on_epoch_end=[sample_grid_callback(100 if labels is not None else 64, labels=labels)],
                 after=_finish(t_start, labels, {"pair_seconds": round(stage1, 1)}), train_config=dit_cfg)


def _finish(t_start: float, labels: torch.Tensor | None, summary: dict[str, Any]
            ) -> Callable[[Path, Trainer], dict[str, Any]]:
    """The recipe's ``after`` hook (both stages together, or a distillation): re-export with the run's total
    time in the provenance and save the final sample grid; returns ``summary`` plus that total."""

    def after(path: Path, trainer: Trainer) -> dict[str, Any]:
        total = time.monotonic() - t_start
        info = export.read_header(path)
        export.save(trainer.model, path, provenance={**info.provenance, "total_train_seconds": round(total, 1)})
        with torch.no_grad():
            imgs = trainer.model.eval().generate(len(labels) if labels is not None else 64,
                                                 generator=torch.Generator().manual_seed(1234), labels=labels)
        save_grid(imgs.float().numpy(), Path(trainer.out) / "samples" / "final.png",
                  nrow=10 if labels is not None else None)
        return {**summary, "total_train_seconds": round(total, 1)}

    return after


def _snapshotter(out: Path, every: float, t_start: float):
    """An on_step hook exporting the model every ``every`` seconds since the run began (both stages)."""
    state = {"next": every}

    def on_step(trainer: Trainer, _out: Any) -> None:
        now = time.monotonic() - t_start
        if now < state["next"]:
            return
        state["next"] = now + every
        was = trainer.model.training
        export.save(trainer.model, out / "snapshots" / f"t-{int(now):05d}.safetensors",
                    provenance={"run_seconds": round(now, 1), "steps": trainer.step})
        trainer.model.train(was)

    return on_step
