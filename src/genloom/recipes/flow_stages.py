"""The flow recipe's second stages (``recipes/flow.py`` runs the first): the adversarial few-step stage at the end
of a run (``--adv-frac``) and reflow distillation of a trained file (``--teacher``)."""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Iterator, cast

import torch

from genloom import export
from genloom.errors import GenloomError
from genloom.models.flow import AdversarialBatch, FlowModel, ReflowBatch
from genloom.recipes import flow as recipe
from genloom.recipes.common import Built, preset_value
from genloom.recipes.flow import (ADV_DEFAULTS, ADV_FLAGS, AE_FLAGS, DISTILL_FLAGS, MODEL_FLAGS, LatentBatches,
                                  _finish, _load_kind)
from genloom.recipes.images import sample_grid_callback
from genloom.training.trainer import TrainConfig, Trainer


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


def denoiser_then_adversarial(model: FlowModel, train: LatentBatches, images: torch.Tensor, adv: dict[str, Any],
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
    opt = {n: preset_value(args, recipe, n, d) for n, (_, d, _) in DISTILL_FLAGS.items()}
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
