"""One Trainer for every model family: the model owns its loss and its step (``train_step``); the Trainer owns
the loop, schedules, clipping, validation, early stopping, checkpoints, resume, signals, logging and export."""
from __future__ import annotations

import copy
import dataclasses
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from genloom import export
from genloom.data.batches import BatchSource
from genloom.errors import ConfigError, GenloomError
from genloom.models.base import GenerativeModel, LossOutput
from genloom.training.allocator import keep_freed_memory
from genloom.training.checkpoint import keep_step_copy, load_checkpoint, save_checkpoint
from genloom.training.metrics import MetricsLog, plot_loss_curve
from genloom.training.precision import CHOICES as PRECISIONS
from genloom.training.precision import matmul_precision
from genloom.training.schedules import SCHEDULES, lr_factor


@dataclass(frozen=True)
class TrainConfig:
    out: str
    epochs: int | None = None
    steps: int | None = None
    time_budget: float | None = None  # seconds; stop cleanly once spent
    batch_size: int = 128
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    schedule: str = "constant"  # constant | cosine | warmup-cosine
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    decay_frac: float = 0.25  # wsd: the final fraction of training over which the LR decays
    grad_clip: float | None = None  # global-norm clipping
    val_every: int | None = None  # steps; None = at the end of every epoch
    val_batches: int | None = None  # cap on validation batches (None = the whole validation set)
    patience: int | None = None  # early stopping: validations without improvement ≥ min_delta
    min_delta: float = 0.0
    checkpoint_every: int = 1  # epochs (also: at every validation when val_every is set)
    checkpoint_steps: int | None = None  # also every N steps: last.pt and a kept copy step-NNNNNNNN.pt
    keep_checkpoints: int = 3  # step-*.pt copies kept (the oldest are deleted)
    tensorboard: bool = True  # TensorBoard event files beside metrics.jsonl (training/tensorboard.py)
    log_every: int = 10
    seed: int = 0
    progress: bool = True
    matmul_precision: str = "ieee"  # ieee | bf16 | auto: float32 matmuls exact or in bf16 on oneDNN (precision.py)

    def __post_init__(self) -> None:
        if self.epochs is None and self.steps is None and self.time_budget is None:
            raise ConfigError("give --epochs, --steps or --time-budget")
        if self.matmul_precision not in PRECISIONS:
            raise ConfigError(f"matmul_precision must be one of {', '.join(PRECISIONS)}, "
                             f"not {self.matmul_precision!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        for name in ("epochs", "steps", "batch_size", "log_every", "checkpoint_every", "checkpoint_steps",
                     "keep_checkpoints"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"{name} must be ≥ 1, got {v}")
        if self.time_budget is not None and self.time_budget <= 0:
            raise ConfigError("time_budget must be > 0 seconds")


class Trainer:
    def __init__(self, model: GenerativeModel, cfg: TrainConfig, train: BatchSource, val: BatchSource | None = None,
                 *, provenance: dict[str, Any] | None = None,
                 on_epoch_end: list[Callable[["Trainer"], None]] | None = None,
                 on_step: Callable[["Trainer", LossOutput], None] | None = None,
                 resume: bool | str | Path = False, resume_cmd: str | None = None) -> None:
        self.model, self.cfg, self.train_src, self.val_src = model, cfg, train, val
        keep_freed_memory()  # no page faults for the same activations every step (allocator.py)
        self.out = Path(cfg.out)
        self.ckpt_dir = self.out / "checkpoints"
        self.provenance = dict(provenance or {})
        self.on_epoch_end = on_epoch_end or []
        self.on_step = on_step
        self.resume_cmd = resume_cmd
        self.optimizers = model.configure_optimizers(cfg)
        for opt in self.optimizers.values():
            for g in opt.param_groups:
                g.setdefault("base_lr", g["lr"])
        self.steps_per_epoch = len(train)
        if cfg.steps is not None:
            self.total_steps: int | None = cfg.steps
        elif cfg.epochs is not None:
            self.total_steps = cfg.epochs * self.steps_per_epoch
        else:
            self.total_steps = None  # time budget only: the schedule follows elapsed time
        self.data_gen = torch.Generator().manual_seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.step = self.epoch = self.batch_in_epoch = 0
        self.epoch_gen_state = self.data_gen.get_state()
        self.elapsed = 0.0
        self.best_val = math.inf
        self.best_step = -1
        self.bad_validations = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.last_val: float | None = None
        self._last_val_step = -1
        self.losses: list[float] = []
        self._stop_reason: str | None = None
        # resume=True: OUT/checkpoints/last.pt; a path: that checkpoint file, or that run directory's last.pt
        resume_step = self._resume(self._resume_path(resume)) if resume else None
        self.log = MetricsLog(self.out / "metrics.jsonl", resume_step=resume_step, tensorboard=cfg.tensorboard)

    # -- hooks used by model.train_step -----------------------------------------------------------------
    def clip_and_step(self, name: str, loss: torch.Tensor, *, params: list[torch.nn.Parameter] | None = None) -> float:
        """Backward, global-norm clip (if configured), optimizer step. Returns the pre-clip gradient norm."""
        opt = self.optimizers[name]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = math.nan
        if self.cfg.grad_clip or (self.step + 1) % self.cfg.log_every == 0:  # the norm costs a pass: only when used
            ps = params if params is not None else [p for g in opt.param_groups for p in g["params"]]
            max_norm = self.cfg.grad_clip if self.cfg.grad_clip else math.inf
            norm = float(torch.nn.utils.clip_grad_norm_(ps, max_norm, foreach=True))
        opt.step()
        return norm

    def request_stop(self, reason: str = "stop requested") -> None:
        self._stop_reason = reason

    # -- state ----------------------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "trainer": {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                        "elapsed": self.elapsed, "best_val": self.best_val, "best_step": self.best_step,
                        "bad_validations": self.bad_validations, "config": dataclasses.asdict(self.cfg)},
            "best_model": self.best_state,
            "rng": {"torch": torch.get_rng_state(), "epoch_data": self.epoch_gen_state},
        }

    def save_checkpoint(self, name: str = "last.pt") -> Path:
        path = self.ckpt_dir / name
        save_checkpoint(path, self._state())
        return path

    def _resume_path(self, resume: bool | str | Path) -> Path:
        if resume is True:
            return self.ckpt_dir / "last.pt"
        p = Path(resume)
        return p / "checkpoints" / "last.pt" if p.is_dir() else p

    def _resume(self, path: Path) -> int:
        ck = load_checkpoint(path)
        try:
            self.model.load_state_dict(ck["model"])
            for k, o in self.optimizers.items():
                o.load_state_dict(ck["optimizers"][k])
        except (KeyError, RuntimeError, ValueError) as e:
            raise GenloomError(f"{path}: does not match this model/config ({e}); use the "
                               f"same flags as the original run or a new --out") from None
        t = ck["trainer"]
        self.step, self.epoch, self.batch_in_epoch = t["step"], t["epoch"], t["batch_in_epoch"]
        self.elapsed, self.best_val, self.best_step = t["elapsed"], t["best_val"], t["best_step"]
        self.bad_validations = t["bad_validations"]
        self.best_state = ck.get("best_model")
        torch.set_rng_state(ck["rng"]["torch"])
        self.epoch_gen_state = ck["rng"]["epoch_data"]
        self._resumed_mid_epoch = True
        self.resumed_from = path
        print(f"Resumed from {path} (step {self.step}, epoch {self.epoch}, {self.elapsed:.0f} s trained)",
              file=sys.stderr)
        return self.step

    # -- validation -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> float:
        """Mean loss over the validation source (weighted by batch size), with its own fixed RNG stream so
        validation never shifts the training randomness."""
        assert self.val_src is not None
        self.model.eval()
        tot = n = 0.0
        sums: dict[str, float] = {}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.seed + 1)
            g = torch.Generator().manual_seed(self.cfg.seed + 1)
            for i, batch in enumerate(self.val_src.epoch(g)):
                if self.cfg.val_batches is not None and i >= self.cfg.val_batches:
                    break
                out = self.model.loss(batch)
                tot += float(out.loss) * out.n
                n += out.n
                for k, v in out.metrics.items():
                    sums[k] = sums.get(k, 0.0) + v * out.n
        self.model.train()
        val = tot / max(n, 1)
        self.last_val = val
        self._last_val_step = self.step
        self.log.write({"type": "val", "step": self.step, "epoch": self.epoch, "val_loss": val,
                        **{f"val_{k}": v / max(n, 1) for k, v in sums.items()}})
        if val < self.best_val - self.cfg.min_delta:
            self.best_val, self.best_step, self.bad_validations = val, self.step, 0
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.save_checkpoint("best.pt")
        else:
            self.bad_validations += 1
            if self.cfg.patience is not None and self.bad_validations >= self.cfg.patience:
                self.request_stop(f"early stopping: no improvement for {self.bad_validations} validations "
                                  f"(best {self.best_val:.4f} at step {self.best_step})")
        return val

    # -- the loop ---------------------------------------------------------------------------------------------
    def _set_lr(self, t0: float) -> float:
        progress = None
        if self.total_steps is None and self.cfg.time_budget:
            progress = (self.elapsed + time.monotonic() - t0) / self.cfg.time_budget
        f = lr_factor(self.cfg.schedule, self.step, self.total_steps, warmup=self.cfg.warmup_steps,
                      min_ratio=self.cfg.min_lr_ratio, progress=progress, decay_frac=self.cfg.decay_frac)
        for opt in self.optimizers.values():
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * f
        return f * self.cfg.lr

    def _done(self, t0: float) -> bool:
        if self._stop_reason:
            return True
        if self.total_steps is not None and self.step >= self.total_steps:
            self._stop_reason = "done"
        elif self.cfg.time_budget is not None and self.elapsed + time.monotonic() - t0 >= self.cfg.time_budget:
            self._stop_reason = f"time budget of {self.cfg.time_budget:g} s spent"
        return self._stop_reason is not None

    def fit(self) -> Path:
        """Train until steps/epochs/time budget/early stop/SIGINT; export the best weights; return the file."""
        prev = signal.getsignal(signal.SIGINT)
        interrupted = []

        def on_sigint(signum, frame):  # first Ctrl-C: stop after this step; second: default behaviour
            interrupted.append(True)
            self.request_stop("interrupted (Ctrl-C)")
            signal.signal(signal.SIGINT, prev)

        in_main = threading.current_thread() is threading.main_thread()
        if in_main:
            signal.signal(signal.SIGINT, on_sigint)
        try:
            self._loop()
        finally:
            if in_main:
                signal.signal(signal.SIGINT, prev)
            self.log.close()
        if interrupted:
            cmd = self.resume_cmd or "the same command with --resume"
            print(f"Interrupted at step {self.step}; checkpoint saved to {self.ckpt_dir / 'last.pt'}. "
                  f"Resume with: {cmd}", file=sys.stderr)
            raise KeyboardInterrupt
        return self.finish()

    def _loop(self) -> None:
        with matmul_precision(self.cfg.matmul_precision) as used:
            self.provenance["matmul_precision"] = used
            self._train_until_done()

    def _train_until_done(self) -> None:
        self.model.train()
        t0 = time.monotonic()
        max_epochs = self.cfg.epochs if self.cfg.epochs is not None else 10**9
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not self.cfg.progress, unit="step",
                   dynamic_ncols=True, leave=True)
        samples_seen, t_rate = 0, time.monotonic()
        try:
            while self.epoch < max_epochs and not self._done(t0):
                if self.batch_in_epoch == 0:
                    self.epoch_gen_state = self.data_gen.get_state()
                else:
                    self.data_gen.set_state(self.epoch_gen_state)
                for batch in self.train_src.epoch(self.data_gen, start=self.batch_in_epoch):
                    lr = self._set_lr(t0)
                    out = self.model.train_step(batch, self.optimizers, self.step, self)
                    self.step += 1
                    self.batch_in_epoch += 1
                    loss = out.loss.item()
                    if not math.isfinite(loss):
                        self.request_stop(f"loss is {loss} at step {self.step}: lower --lr or set --grad-clip")
                    self.losses.append(loss)
                    samples_seen += out.n
                    if self.step % self.cfg.log_every == 0:
                        now = time.monotonic()
                        rate = samples_seen / max(now - t_rate, 1e-9)
                        samples_seen, t_rate = 0, now
                        self.log.write({"type": "train", "step": self.step, "epoch": self.epoch, "loss": loss,
                                        "lr": lr, "samples_per_s": rate, **out.metrics})
                        shown = {k: f"{out.metrics[k]:.4g}" for k in getattr(self.model, "progress_metrics", ())
                                 if k in out.metrics}  # a model may name metrics for the bar (GAN: d/g loss)
                        bar.set_postfix(loss=f"{loss:.4g}", samples_s=f"{rate:.0f}", **shown, refresh=False)
                    bar.update(1)
                    if self.on_step:
                        self.on_step(self, out)
                    if self.cfg.checkpoint_steps and self.step % self.cfg.checkpoint_steps == 0:
                        self._checkpoint(t0, keep_step=True)
                    if self.cfg.val_every and self.step % self.cfg.val_every == 0 and self.val_src is not None:
                        self.validate()
                        self._checkpoint(t0)
                    if self._done(t0) and self.batch_in_epoch < self.steps_per_epoch:
                        break  # stop mid-epoch; at an epoch's last batch, finish the epoch first
                else:  # the epoch ran to its end
                    self.batch_in_epoch = 0
                    self.epoch += 1
                    if self.val_src is not None and not self.cfg.val_every:
                        self.validate()
                    bar.set_description(f"epoch {self.epoch}" + (f" val {self.last_val:.4g}"
                                                                 if self.last_val is not None else ""))
                    for cb in self.on_epoch_end:
                        cb(self)
                    if self.epoch % self.cfg.checkpoint_every == 0 or self._done(t0):
                        self._checkpoint(t0)
                    continue
                break  # stopped mid-epoch
            if (self.val_src is not None and self.cfg.val_every and self._last_val_step != self.step
                    and self._stop_reason is not None and not self._stop_reason.startswith("interrupted")):
                self.validate()  # score the final steps too, so they can be the ones exported
            self._checkpoint(t0)
        finally:
            bar.close()
            self.elapsed += time.monotonic() - t0

    def _checkpoint(self, t0: float, *, keep_step: bool = False) -> None:
        elapsed, self.elapsed = self.elapsed, self.elapsed + time.monotonic() - t0
        path = self.save_checkpoint("last.pt")
        if keep_step:  # --checkpoint-steps: a copy per step count, the newest keep_checkpoints of them kept
            keep_step_copy(path, self.step, keep=self.cfg.keep_checkpoints)
        self.elapsed = elapsed

    def finish(self) -> Path:
        """Export the best weights (or the last, without validation), write the loss curve, return the file."""
        if self._stop_reason and self._stop_reason != "done":
            print(f"Stopped: {self._stop_reason}", file=sys.stderr)
        model = self.model
        if self.best_state is not None:
            model = copy.deepcopy(self.model)
            model.load_state_dict(self.best_state)
        prov = {**self.provenance, "steps": self.step, "epochs": self.epoch, "train_seconds": round(self.elapsed, 2),
                "best_val_loss": None if math.isinf(self.best_val) else self.best_val}
        path = export.save(model, self.out / "model.safetensors", provenance=prov)
        plot_loss_curve(self.out / "metrics.jsonl", self.out / "loss.png", title=f"{model.kind} training")
        return path
