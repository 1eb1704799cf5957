"""One Trainer for every model family: the model owns its loss and its step (``train_step``); the Trainer owns
the loop, schedules, clipping, validation, early stopping, checkpoints, resume, signals, logging and export —
on any device, in any precision, in one process or data-parallel over many.

Its pieces live beside it: ``config.py`` (``TrainConfig``), ``checkpoint.py`` (atomic files, the state a resume
needs and its restoration), ``probe.py`` (``--precision auto``: the measured plan), ``distributed.py`` (sharding,
gradient all-reduce, stop flags, reductions over ranks, the lost-rank error), ``metrics.py`` (metrics.jsonl, the
loss plot, peak memory)."""
from __future__ import annotations

import copy
import math
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from genloom import export
from genloom.data.batches import BatchSource
from genloom.device import resolve_device
from genloom.errors import GenloomError
from genloom.models.base import GenerativeModel, LossOutput
from genloom.training import distributed as dd
from genloom.training import precision as prec
from genloom.training.allocator import keep_freed_memory
from genloom.training.checkpoint import (keep_step_copy, restore_trainer, save_checkpoint,
                                         trainer_state)
from genloom.training.config import TrainConfig
from genloom.training.metrics import MetricsLog, NullLog, peak_memory_mb, plot_loss_curve
from genloom.training.probe import precision_plan
from genloom.training.schedules import lr_factor

__all__ = ["Trainer", "TrainConfig"]


class Trainer:
    def __init__(self, model: GenerativeModel, cfg: TrainConfig, train: BatchSource, val: BatchSource | None = None,
                 *, provenance: dict[str, Any] | None = None,
                 on_epoch_end: list[Callable[["Trainer"], None]] | None = None,
                 on_step: Callable[["Trainer", LossOutput], None] | None = None,
                 resume: bool | str | Path = False, resume_cmd: str | None = None) -> None:
        self.model, self.cfg = model, cfg
        keep_freed_memory()  # no page faults for the same activations every step (allocator.py)
        self.device = resolve_device(cfg.device)
        self.dist = dd.init(self.device)  # world 1 unless launched by torchrun
        if self.dist.enabled:
            groups = getattr(model, "batch_groups", 1)  # the GAN: n_critic minibatches per step
            per = cfg.batch_size
            if per < self.dist.world:
                raise GenloomError(f"--batch-size {per} is smaller than the {self.dist.world} processes; the "
                                   f"batch size is global: use at least {self.dist.world}")
            if not hasattr(train, "sharded"):
                raise GenloomError(f"{type(train).__name__} cannot be sharded over processes yet; train this "
                                   f"family without --nproc / torchrun")
            train = train.sharded(self.dist.rank, self.dist.world, groups=groups)  # type: ignore[attr-defined]
            if val is not None:
                val = val.sharded(self.dist.rank, self.dist.world, skip_small=False)  # type: ignore[attr-defined]
        model.to(self.device)
        for src in (train, val):
            if src is not None and hasattr(src, "to"):
                src.to(self.device)
        self.train_src, self.val_src = train, val
        self.plan: prec.Plan | None = None
        self._scalers: dict[str, Any] = {}
        self._flags = torch.zeros(dd.N_FLAGS)  # local stop wishes sent with the next gradient all-reduce
        self._remote_flags: torch.Tensor | None = None
        self._grad_weight = 1.0
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
        self.resumed_from: Path | None = None  # the checkpoint this run continues (set by restore_trainer)
        # resume=True: OUT/checkpoints/last.pt; a path: that checkpoint file, or that run directory's last.pt
        resume_step = restore_trainer(self, self._resume_path(resume)) if resume else None
        self.log = MetricsLog(self.out / "metrics.jsonl", resume_step=resume_step, tensorboard=cfg.tensorboard) \
            if self.dist.is_main else NullLog()
        if self.dist.enabled:
            dd.broadcast_module(self.model)  # the same start everywhere, whatever the seeds did

    # -- hooks used by model.train_step -----------------------------------------------------------------
    def clip_and_step(self, name: str, loss: torch.Tensor, *, params: list[torch.nn.Parameter] | None = None) -> float:
        """Backward, global-norm clip (if configured), optimizer step. Returns the pre-clip gradient norm."""
        opt = self.optimizers[name]
        opt.zero_grad(set_to_none=True)
        scaler = self._scalers.get(name)
        if self._grad_weight != 1.0:  # this rank's share of an uneven global batch (distributed.py)
            loss = loss * self._grad_weight
        (scaler.scale(loss) if scaler is not None else loss).backward()
        ps = params if params is not None else [p for g in opt.param_groups for p in g["params"]]
        if self.dist.enabled:  # average the gradients by hand (double backward safe); stop flags ride along
            self._remote_flags = dd.allreduce_grads(ps, self.dist.world, self._flags)
        if scaler is not None:
            scaler.unscale_(opt)
        norm: torch.Tensor | float = math.nan
        if self.cfg.grad_clip or (self.step + 1) % self.cfg.log_every == 0:  # the norm costs a pass: only when used
            max_norm = self.cfg.grad_clip if self.cfg.grad_clip else math.inf
            norm = torch.nn.utils.clip_grad_norm_(ps, max_norm, foreach=True)  # a tensor: no host sync here
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        return norm  # type: ignore[return-value]  # a 0-d tensor: read later, without a sync here

    def request_stop(self, reason: str = "stop requested") -> None:
        """Stop after this step. Call it for decisions every rank makes alike (validation, step counts); a
        decision one rank makes alone (signal, clock, a non-finite loss) goes through ``_local_stop``."""
        self._stop_reason = reason

    def _local_stop(self, flag: int, reason: str) -> None:
        if not self.dist.enabled:
            self._stop_reason = reason
        else:  # sent to every rank with the next gradient all-reduce; all stop at the same step
            self._flags[flag] = 1.0
            self._local_reason = reason

    def _apply_remote_flags(self) -> None:
        f = self._remote_flags
        if f is None or self._stop_reason:
            return
        self._remote_flags = None
        self._stop_reason = dd.stop_reason(f, self._flags, getattr(self, "_local_reason", None), step=self.step,
                                           time_budget=self.cfg.time_budget)

    # -- state ----------------------------------------------------------------------------------------------
    def save_checkpoint(self, name: str = "last.pt") -> Path:
        path = self.ckpt_dir / name
        if self.dist.is_main:  # rank 0 alone writes; every rank holds the same state
            save_checkpoint(path, trainer_state(self))
        return path

    def _resume_path(self, resume: bool | str | Path) -> Path:
        if resume is True:
            return self.ckpt_dir / "last.pt"
        p = Path(resume)
        return p / "checkpoints" / "last.pt" if p.is_dir() else p

    # -- validation -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> float:
        """Mean loss over the validation source (weighted by batch size), with its own fixed RNG stream so
        validation never shifts the training randomness."""
        assert self.val_src is not None
        self.model.eval()
        tot: torch.Tensor | float = 0.0
        n = 0.0
        sums: dict[str, Any] = {}
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.cfg.seed + 1)
            g = torch.Generator().manual_seed(self.cfg.seed + 1)
            for i, batch in enumerate(self.val_src.epoch(g)):
                if self.cfg.val_batches is not None and i >= self.cfg.val_batches:
                    break
                self.model.row_shard = getattr(self.val_src, "current", None)
                if batch[0].numel() == 0:  # a small last batch under data parallelism: another rank's
                    continue
                out = self.model.loss(batch)
                tot = tot + out.loss.detach().double() * out.n
                n += out.n
                for k, v in out.metrics.items():
                    sums[k] = sums.get(k, 0.0) + torch.as_tensor(v, dtype=torch.float64) * out.n
        self.model.row_shard = None
        self.model.train()
        tot, n, sums = dd.sum_over_ranks(tot, n, sums, self.dist)
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
            self._local_stop(dd.FLAG_TIME, f"time budget of {self.cfg.time_budget:g} s spent")
        return self._stop_reason is not None

    def fit(self) -> Path:
        """Train until steps/epochs/time budget/early stop/SIGINT/SIGTERM; export the best weights (rank 0);
        return the file. A signal on any rank stops every rank at the same step, after a checkpoint."""
        handled = (signal.SIGINT, signal.SIGTERM)
        prev = {sig: signal.getsignal(sig) for sig in handled}

        def on_signal(signum, frame):  # first signal: stop after this step; a second one: default behaviour
            what = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            self._local_stop(dd.FLAG_SIGNAL, f"interrupted ({what})")
            signal.signal(signum, prev[signum])

        in_main = threading.current_thread() is threading.main_thread()
        if in_main:
            for sig in handled:
                signal.signal(sig, on_signal)
        try:
            self._loop()
        except RuntimeError as e:  # a collective failed: another rank died (gloo: its sockets closed)
            lost = dd.lost_process_error(e, self.dist, step=self.step, resume_cmd=self.resume_cmd)
            if lost is None:
                raise
            raise lost from None
        finally:
            if in_main:
                for sig in handled:
                    signal.signal(sig, prev[sig])
            self.log.close()
        if self._stop_reason and self._stop_reason.startswith("interrupted"):
            if self.dist.is_main:
                cmd = self.resume_cmd or "the same command with --resume"
                print(f"Interrupted at step {self.step}; checkpoint saved to {self.ckpt_dir / 'last.pt'}. "
                      f"Resume with: {cmd}", file=sys.stderr)
            raise KeyboardInterrupt
        path = self.finish()
        if self.dist.enabled:
            torch.distributed.barrier()  # the export is on disk before any rank reads it
        return path

    def _loop(self) -> None:
        self.plan = precision_plan(self)
        self.provenance.update(precision=self.plan.precision, device=str(self.device.type),
                               world_size=self.dist.world)
        if self.plan.grad_scaler:
            self._scalers = {k: torch.amp.GradScaler(self.device.type) for k in self.optimizers}
        compiled = self.cfg.compile
        if compiled:  # the loss, where the model's math is; the module itself (and its state_dict keys) stay as is
            self.model.loss = torch.compile(type(self.model).loss.__get__(self.model))  # type: ignore[method-assign]
        try:
            with prec.applied(self.plan):
                self._train_until_done()
        finally:
            if compiled:
                del self.model.loss  # back to the class's method

    def _train_until_done(self) -> None:
        self.model.train()
        t0 = time.monotonic()
        max_epochs = self.cfg.epochs if self.cfg.epochs is not None else 10**9
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not self.cfg.progress or not self.dist.is_main,
                   unit="step", dynamic_ncols=True, leave=True)
        samples_seen, t_rate = 0, time.monotonic()
        check_every_step = self.device.type == "cpu"  # a host read of the loss costs nothing on a CPU
        try:
            while self.epoch < max_epochs and not self._done(t0):
                if self.batch_in_epoch == 0:
                    self.epoch_gen_state = self.data_gen.get_state()
                else:
                    self.data_gen.set_state(self.epoch_gen_state)
                for batch in self.train_src.epoch(self.data_gen, start=self.batch_in_epoch):
                    lr = self._set_lr(t0)
                    shard = getattr(self.train_src, "current", None)
                    self.model.row_shard = shard
                    if shard is not None:  # an uneven split: weight the local mean by its share of the batch
                        self._grad_weight = (shard.hi - shard.lo) * self.dist.world / shard.n
                    with prec.autocast(self.plan):
                        out = self.model.train_step(batch, self.optimizers, self.step, self)
                    self.step += 1
                    self.batch_in_epoch += 1
                    samples_seen += out.n
                    log_now = self.step % self.cfg.log_every == 0
                    if check_every_step or log_now:  # reading the flags syncs a GPU: every rank reads at the
                        self._apply_remote_flags()  # same steps, so every rank still stops at the same step
                    if check_every_step or log_now:
                        loss = float(out.loss.detach())
                        if not math.isfinite(loss):
                            self._local_stop(dd.FLAG_NONFINITE, f"loss is {loss} at step {self.step}: lower --lr "
                                                                f"or set --grad-clip")
                    if log_now:
                        loss, metrics = dd.reduce_loss_output(out, self.dist)
                        now = time.monotonic()
                        rate = samples_seen * self.dist.world / max(now - t_rate, 1e-9)
                        samples_seen, t_rate = 0, now
                        self.log.write({"type": "train", "step": self.step, "epoch": self.epoch, "loss": loss,
                                        "lr": lr, "samples_per_s": rate, **metrics})
                        shown = {k: f"{metrics[k]:.4g}" for k in getattr(self.model, "progress_metrics", ())
                                 if k in metrics}  # a model may name metrics for the bar (GAN: d/g loss)
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
                    if self.dist.is_main:  # sample grids and other per-epoch files: rank 0 alone
                        for cb in self.on_epoch_end:
                            cb(self)
                    if self.epoch % self.cfg.checkpoint_every == 0 or self._done(t0):
                        self._checkpoint(t0)
                    continue
                break  # stopped mid-epoch
            stop = self._stop_reason or ""
            length_spent = stop == "done" or stop.startswith("time budget")  # not a request, not a signal
            unscored = self.val_src is not None and self._last_val_step != self.step
            if unscored and (length_spent or (self.cfg.val_every and stop and not stop.startswith("interrupted"))):
                # score the final steps too, so they can be the ones exported: a time budget ends mid-epoch, just
                # after the schedule has annealed the LR, and those last steps are usually the best ones
                self.validate()
            self._checkpoint(t0)
        finally:
            self.model.row_shard = None
            bar.close()
            self.elapsed += time.monotonic() - t0

    def _checkpoint(self, t0: float, *, keep_step: bool = False) -> None:
        elapsed, self.elapsed = self.elapsed, self.elapsed + time.monotonic() - t0
        path = self.save_checkpoint("last.pt")
        if keep_step and self.dist.is_main:  # --checkpoint-steps: a copy per step count, the newest few kept
            keep_step_copy(path, self.step, keep=self.cfg.keep_checkpoints)
        self.elapsed = elapsed

    def finish(self) -> Path:
        """Export the best weights (or the last, without validation), write the loss curve, return the file.
        Under data parallelism rank 0 alone writes; the others return the same path."""
        path = self.out / "model.safetensors"
        if not self.dist.is_main:
            return path
        if self._stop_reason and self._stop_reason != "done":
            print(f"Stopped: {self._stop_reason}", file=sys.stderr)
        model = self.model
        if self.best_state is not None:
            model = copy.deepcopy(self.model)
            model.load_state_dict(self.best_state)
        prov = {**self.provenance, "peak_memory_mb": round(peak_memory_mb(self.device), 1),
                "steps": self.step, "epochs": self.epoch, "train_seconds": round(self.elapsed, 2),
                "best_val_loss": None if math.isinf(self.best_val) else self.best_val}
        path = export.save(model, path, provenance=prov)
        plot_loss_curve(self.out / "metrics.jsonl", self.out / "loss.png", title=f"{model.kind} training")
        return path
