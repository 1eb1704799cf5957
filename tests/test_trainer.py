import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from genloom import export
from genloom.data.batches import ImageBatches
from genloom.data.images import load_images
from genloom.models.vae import VAE, VAEConfig
from genloom.training.checkpoint import load_checkpoint, save_checkpoint
from genloom.training.metrics import read_metrics
from genloom.training.schedules import lr_factor
from genloom.training.trainer import TrainConfig, Trainer

SMALL = VAEConfig(enc_hidden=(64,), dec_hidden=(64,), latent=4)


def _trainer(idx_dir, out, *, resume=False, on_step=None, **kw):
    s = load_images("fashion-mnist", idx_dir, val_size=100)
    torch.manual_seed(0)
    cfg = TrainConfig(out=str(out), **{"epochs": 3, "batch_size": 64, "schedule": "warmup-cosine",
                                       "warmup_steps": 4, "grad_clip": 5.0, "log_every": 1, "progress": False,
                                       **kw})
    return Trainer(VAE(SMALL), cfg, ImageBatches(s.train, cfg.batch_size), ImageBatches(s.val, 50, shuffle=False),
                   resume=resume, on_step=on_step)


def _losses(out):
    return [(r["step"], r["loss"]) for r in read_metrics(Path(out) / "metrics.jsonl") if r["type"] == "train"]


def test_resume_gives_identical_per_step_losses(idx_dir, tmp_path):
    _trainer(idx_dir, tmp_path / "a").fit()
    full = _losses(tmp_path / "a")
    assert len(full) == 24  # 3 epochs x 8 batches

    def stop_mid_epoch(tr, out):
        if tr.step == 11:
            tr.request_stop("test interruption")

    _trainer(idx_dir, tmp_path / "b", on_step=stop_mid_epoch).fit()
    assert len(_losses(tmp_path / "b")) == 11
    _trainer(idx_dir, tmp_path / "b", resume=True).fit()
    resumed = _losses(tmp_path / "b")
    assert [s for s, _ in resumed] == list(range(1, 25))
    assert resumed == full  # exact, step by step
    a = export.load(tmp_path / "a" / "model.safetensors").state_dict()
    b = export.load(tmp_path / "b" / "model.safetensors").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_early_stopping_keeps_best_weights(idx_dir, tmp_path):
    snaps = {}

    tr = _trainer(idx_dir, tmp_path / "e", epochs=10, patience=1, min_delta=1e9)
    tr.on_epoch_end.append(lambda t: snaps.setdefault(t.epoch, {k: v.clone() for k, v in t.model.state_dict().items()}))
    path = tr.fit()
    assert tr.epoch == 2 and tr.best_step == 8  # first validation is the best; the second fails to improve
    best = export.load(path).state_dict()
    assert all(torch.equal(best[k], snaps[1][k]) for k in best)
    assert not all(torch.equal(best[k], snaps[2][k]) for k in best)


def test_time_budget_stops_cleanly(idx_dir, tmp_path):
    t = time.monotonic()
    tr = _trainer(idx_dir, tmp_path / "t", epochs=None, time_budget=1.0)
    path = tr.fit()
    assert time.monotonic() - t < 30 and path.exists() and tr.step > 0
    assert (tmp_path / "t" / "loss.png").stat().st_size > 1000


def test_schedules():
    assert lr_factor("constant", 50, 100) == 1.0
    assert lr_factor("cosine", 0, 100) == pytest.approx(1.0)
    assert lr_factor("cosine", 50, 100) == pytest.approx(0.5)
    assert lr_factor("cosine", 100, 100) == pytest.approx(0.0)
    assert lr_factor("cosine", 100, 100, min_ratio=0.1) == pytest.approx(0.1)
    assert lr_factor("warmup-cosine", 0, 110, warmup=10) == pytest.approx(0.1)
    assert lr_factor("warmup-cosine", 9, 110, warmup=10) == pytest.approx(1.0)
    assert lr_factor("warmup-cosine", 60, 110, warmup=10) == pytest.approx(0.5)
    assert lr_factor("cosine", 0, None, progress=0.5) == pytest.approx(0.5)
    assert lr_factor("wsd", 70, 100) == 1.0  # held until the last quarter
    assert lr_factor("wsd", 90, 100) == pytest.approx(0.4)
    assert lr_factor("wsd", 100, 100, min_ratio=0.1) == pytest.approx(0.1)
    assert lr_factor("wsd", 0, 100, warmup=10) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_factor("step", 0, 10)


def test_grad_clip_bounds_update(idx_dir, tmp_path):
    tr = _trainer(idx_dir, tmp_path / "c", grad_clip=1e-3, steps=2)
    norms = []
    orig = torch.nn.utils.clip_grad_norm_

    def spy(ps, max_norm, **kw):
        n = orig(ps, max_norm, **kw)
        norms.append(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in ps if p.grad is not None])))
        return n

    torch.nn.utils.clip_grad_norm_, saved = spy, orig
    try:
        tr.fit()
    finally:
        torch.nn.utils.clip_grad_norm_ = saved
    assert norms and all(n <= 1e-3 * 1.01 for n in norms)


_WRITER = r"""
import sys, torch
from pathlib import Path
from genloom.training.checkpoint import save_checkpoint
p = Path(sys.argv[1]); i = 0
while True:
    i += 1
    save_checkpoint(p, {"i": i, "w": torch.full((4_000_000,), float(i))})
    print(i, flush=True)
"""


def test_kill_during_checkpoint_write_never_corrupts(tmp_path):
    path = tmp_path / "ck" / "last.pt"
    for trial in range(4):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True)
        proc.stdout.readline()  # at least one complete checkpoint exists
        time.sleep(0.05 + 0.07 * trial)  # land the kill somewhere inside a later write
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        ck = load_checkpoint(path)
        assert torch.all(ck["w"] == float(ck["i"]))


def test_failed_write_keeps_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"i": 1})

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(Exception):
        save_checkpoint(path, {"i": 2, "x": Boom()})
    assert load_checkpoint(path)["i"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_sigint_saves_checkpoint_and_prints_resume_command(idx_dir, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "genloom.cli", "train", "vae", "--data", str(idx_dir), "--epochs", "500",
           "--latent", "4", "--enc-hidden", "32", "--dec-hidden", "32", "--log-every", "1", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        m = out / "metrics.jsonl"
        if m.exists() and len(m.read_text().splitlines()) > 20:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Resume with: genloom train vae" in err and "--resume" in err
    ck = load_checkpoint(out / "checkpoints" / "last.pt")
    step = ck["trainer"]["step"]
    assert step >= 15
    r = subprocess.run(cmd[:cmd.index("--epochs") + 1] + ["1"] + cmd[cmd.index("--epochs") + 2:] + ["--resume"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["steps"] == step


def test_steps_after_the_last_validation_are_validated_at_the_end(idx_dir, tmp_path):
    tr = _trainer(idx_dir, tmp_path / "v", epochs=None, steps=10, val_every=4)
    tr.fit()
    vals = [r["step"] for r in read_metrics(tmp_path / "v" / "metrics.jsonl") if r["type"] == "val"]
    assert vals == [4, 8, 10]


def test_run_ending_mid_epoch_validates_its_last_steps(idx_dir, tmp_path):
    """A run whose length (steps or time budget) ends mid-epoch scores its final weights, which are the ones the
    schedule has just annealed, so they can be exported; per-epoch validation alone would miss them."""
    tr = _trainer(idx_dir, tmp_path / "m", epochs=None, steps=11, schedule="wsd")  # 8 batches per epoch
    path = tr.fit()
    vals = [r for r in read_metrics(tmp_path / "m" / "metrics.jsonl") if r["type"] == "val"]
    assert [r["step"] for r in vals] == [8, 11]
    assert tr.best_val == pytest.approx(min(r["val_loss"] for r in vals))
    if tr.best_step == 11:
        final = export.load(path).state_dict()
        assert all(torch.equal(final[k], v) for k, v in tr.model.state_dict().items())
