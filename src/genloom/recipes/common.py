"""What every ``genloom train <family>`` shares: flags, preset resolution, the run itself."""
from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import torch

from genloom.data.batches import BatchSource
from genloom.errors import GenloomError
from genloom.models.base import GenerativeModel
from genloom.options import TRAIN_DEVICE_HELP, TRAIN_PRECISION_HELP
from genloom.runconfig import write_resolved
from genloom.training.schedules import SCHEDULES
from genloom.training.trainer import TrainConfig, Trainer


@dataclass
class Built:
    model: GenerativeModel
    train: BatchSource
    val: BatchSource | None
    provenance: dict[str, Any] = field(default_factory=dict)
    on_epoch_end: list[Callable[[Trainer], None]] = field(default_factory=list)
    after: Callable[[Path, Trainer], dict[str, Any]] | None = None  # final evaluation, printed as a summary
    train_config: TrainConfig | None = None  # replaces the run's config (flow: the budget left after stage 1)
    on_step: Callable[[Trainer, Any], None] | None = None


# flag -> (TrainConfig field, type, help). Defaults are None so that preset and family defaults can fill in.
TRAIN_FLAGS: dict[str, tuple[str, Any, str]] = {
    "--epochs": ("epochs", int, "passes over the training set"),
    "--steps": ("steps", int, "optimizer steps in total (overrides --epochs for the schedule)"),
    "--time-budget": ("time_budget", float, "stop cleanly after this many seconds of training"),
    "--batch-size": ("batch_size", int, "batch size"),
    "--lr": ("lr", float, "peak learning rate (AdamW)"),
    "--weight-decay": ("weight_decay", float, "AdamW weight decay (matrices only)"),
    "--schedule": ("schedule", str, f"learning-rate schedule: {', '.join(SCHEDULES)}"),
    "--warmup-steps": ("warmup_steps", int, "linear warmup steps (warmup-cosine)"),
    "--min-lr-ratio": ("min_lr_ratio", float, "final LR as a fraction of the peak (cosine, wsd)"),
    "--decay-frac": ("decay_frac", float, "wsd: fraction of training at the end over which the LR decays"),
    "--grad-clip": ("grad_clip", float, "clip the global gradient norm to this value (0 = off)"),
    "--val-every": ("val_every", int, "validate every K steps (default: every epoch)"),
    "--val-batches": ("val_batches", int, "cap on validation batches (default: whole validation set)"),
    "--patience": ("patience", int, "early stopping: validations without improvement before stopping"),
    "--min-delta": ("min_delta", float, "early stopping: the improvement that counts"),
    "--checkpoint-every": ("checkpoint_every", int, "write checkpoints/last.pt every N epochs"),
    "--checkpoint-steps": ("checkpoint_steps", int, "also write checkpoints/last.pt every N steps, keeping a copy "
                           "checkpoints/step-NNNNNNNN.pt (for long runs)"),
    "--keep-checkpoints": ("keep_checkpoints", int, "how many step-NNNNNNNN.pt copies to keep (default 3)"),
    "--log-every": ("log_every", int, "write a metrics.jsonl record every N steps"),
    "--seed": ("seed", int, "random seed (data order, initialisation, noise)"),
    "--device": ("device", str, TRAIN_DEVICE_HELP),
    "--precision": ("precision", str, TRAIN_PRECISION_HELP),
}
RUN_DEFAULTS: dict[str, Any] = {"device": "auto", "precision": "auto"}  # for every family, under its defaults


def add_common_args(p: argparse.ArgumentParser, rec: ModuleType) -> None:
    p.add_argument("--config", type=Path, default=None, metavar="FILE",
                   help="read flags from a TOML file (keys: the flag names, e.g. lr = 1e-3; flags given here win; "
                        "OUT/config.toml of a run repeats it)")
    p.add_argument("--out", required=True, type=Path,
                   help="run directory: model.safetensors, metrics.jsonl, loss.png, samples/, checkpoints/")
    p.add_argument("--preset", choices=sorted(rec.PRESETS) or None, default=None,
                   help="named recipe: " + "; ".join(f"{k}: {v.get('_doc', '')}" for k, v in rec.PRESETS.items())
                   if rec.PRESETS else "no presets for this family")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                   help="continue exactly where a run stopped: from OUT/checkpoints/last.pt, or from CHECKPOINT "
                        "(a .pt file, or a run directory whose last checkpoint to take)")
    p.add_argument("--no-tensorboard", action="store_true",
                   help="no TensorBoard event files (default: written to OUT beside metrics.jsonl)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the model's loss (off by default: no gain for the VAE; the LM step 0.70x but "
                        "only after minutes of compiling; docs/benchmarks.md)")
    p.add_argument("--nproc", type=int, default=None,
                   help="data-parallel processes on this machine, launched through torch.distributed.run (same as "
                        "`torchrun --nproc-per-node N -m genloom train …`); --batch-size stays the global batch")
    g = p.add_argument_group("training (defaults depend on the family and preset)")
    for flag, (_, typ, help_) in TRAIN_FLAGS.items():
        d = rec.DEFAULTS.get(TRAIN_FLAGS[flag][0])
        g.add_argument(flag, type=typ, default=None, help=help_ + (f" (default: {d})" if d is not None else ""))


def train_config(args: argparse.Namespace, rec: ModuleType) -> TrainConfig:
    """Explicit flag > preset > family default > TrainConfig default."""
    merged: dict[str, Any] = dict(RUN_DEFAULTS)
    # a recipe may make its defaults depend on other flags (the GAN's depend on --loss)
    merged.update(rec.defaults_for(args) if hasattr(rec, "defaults_for") else rec.DEFAULTS)
    if args.preset:
        merged.update({k: v for k, v in rec.PRESETS[args.preset].items() if not k.startswith("_")
                       and k in {f.name for f in dataclasses.fields(TrainConfig)}})
    for name, _, _ in TRAIN_FLAGS.values():
        v = getattr(args, name)
        if v is not None:
            merged[name] = v
    lengths = ("epochs", "steps", "time_budget")
    if any(getattr(args, n) is not None for n in lengths):  # an explicit run length replaces the default one
        for n in lengths:
            if getattr(args, n) is None:
                merged.pop(n, None)
    if getattr(args, "compile", None):
        merged["compile"] = True
    if merged.get("grad_clip") == 0:
        merged["grad_clip"] = None
    return TrainConfig(out=str(args.out), progress=not args.no_progress and sys.stderr.isatty(),
                       tensorboard=not getattr(args, "no_tensorboard", False), **{
        k: v for k, v in merged.items() if k in {f.name for f in dataclasses.fields(TrainConfig)}})


def preset_value(args: argparse.Namespace, rec: ModuleType, name: str, default: Any) -> Any:
    """A family-specific option: explicit flag > preset > default."""
    v = getattr(args, name, None)
    if v is not None:
        return v
    if args.preset and name in rec.PRESETS[args.preset]:
        return rec.PRESETS[args.preset][name]
    return default


def resolved_flags(args: argparse.Namespace, rec: ModuleType, tcfg: TrainConfig) -> dict[str, Any]:
    """Every flag's value for OUT/config.toml: training settings as resolved (flag > preset > family default),
    the family's own as given or as the preset sets them; None where unset (the family default applies)."""
    preset = rec.PRESETS[args.preset] if getattr(args, "preset", None) else {}
    train = {name for name, _, _ in TRAIN_FLAGS.values()}
    out: dict[str, Any] = {}
    for k, v in vars(args).items():
        if k in ("command", "family", "func", "config", "resume") or callable(v):
            continue
        if k in train:
            v = getattr(tcfg, k)
            if k == "grad_clip" and v is None:
                v = 0.0  # --grad-clip 0 (off), not the family default
        elif v is None and isinstance(preset.get(k), (str, int, float)):
            v = preset[k]  # (a list-valued preset setting is left to the preset, which is written too)
        out[k] = str(v) if isinstance(v, Path) else v
    return out


def run(rec: ModuleType, args: argparse.Namespace, *, resume_cmd: str | None = None) -> dict[str, Any]:
    """Train ``rec``'s model with the options in ``args``; ``resume_cmd`` is the command the Ctrl-C hint names.
    With ``--nproc N`` (and not already under torchrun) this process launches N training processes instead."""
    from genloom.training import distributed as dd

    resume_cmd = os.environ.get("GENLOOM_RESUME_CMD") or resume_cmd
    if args.nproc is not None and args.nproc > 1 and dd.launched_world() == 1:
        from genloom.training.launch import launch, strip_nproc

        train_config(args, rec)  # bad flags: one error here, not one per process
        if resume_cmd is None:
            raise GenloomError("--nproc needs the command line to launch (use genloom train … --nproc N)")
        argv = shlex.split(resume_cmd)[1:]  # "train FAMILY …options… --resume"
        if not args.resume:
            argv = argv[:-1]
        elif args.resume is not True:  # --resume CHECKPOINT: every rank resumes from that file, not OUT's last.pt
            argv.append(str(args.resume))
        rc = launch(args.nproc, strip_nproc(argv), resume_cmd=resume_cmd)
        if rc:
            raise SystemExit(rc)
        return {}
    if resume_cmd and dd.launched_world() > 1 and not os.environ.get("GENLOOM_RESUME_CMD"):
        local = os.environ.get("LOCAL_WORLD_SIZE", "1")
        opts = f"--nproc-per-node {local}" if local == str(dd.launched_world()) else "<the same torchrun options>"
        resume_cmd = f"torchrun {opts} -m " + resume_cmd
    if args.threads:
        torch.set_num_threads(args.threads)
    tcfg = train_config(args, rec)
    torch.manual_seed(tcfg.seed)  # initialisation is part of the seeded run
    built: Built = rec.build(args, tcfg)
    tcfg = built.train_config or tcfg
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun: rank 0 alone writes the run's files
        write_resolved(Path(tcfg.out) / "config.toml", args.family, resolved_flags(args, rec, tcfg))
    trainer = Trainer(built.model, tcfg, built.train, built.val, provenance=built.provenance,
                      on_epoch_end=built.on_epoch_end, on_step=built.on_step, resume=args.resume,
                      resume_cmd=resume_cmd)
    try:
        path = trainer.fit()
    finally:
        dd.shutdown()
    if not trainer.dist.is_main:
        return {}  # rank 0 evaluates, summarises and writes
    summary: dict[str, Any] = {"model": str(path), "steps": trainer.step, "epochs": trainer.epoch,
                               "train_seconds": round(trainer.elapsed, 1)}
    if built.after is not None:
        summary.update(built.after(path, trainer))
    return summary
