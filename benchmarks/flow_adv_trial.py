"""The flow recipe's adversarial few-step stage started from a trained flow file (e.g. a --snapshot-every snapshot),
for a number of seconds including the teacher's pairs: trials of the stage's settings on one teacher.

    python benchmarks/flow_adv_trial.py RUN/snapshots/t-01320.safetensors --out runs/advB --seconds 480 \
        --pairs 4096 --grad-steps 1
    python benchmarks/flow_fid.py runs/advB/model.safetensors --n 10000 --settings shortcut:4:0 --threads 1
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from genloom import export
from genloom.data.images import load_images
from genloom.models.flow import FlowModel
from genloom.recipes.flow import ADV_DEFAULTS, AdversarialBatches
from genloom.training.trainer import TrainConfig, Trainer

p = argparse.ArgumentParser()
p.add_argument("file", type=Path)
p.add_argument("--out", type=Path, required=True)
p.add_argument("--seconds", type=float, default=480)
p.add_argument("--steps", type=int, default=4)
p.add_argument("--grad-steps", type=int, default=1)
p.add_argument("--weight", type=float, default=1.0)
p.add_argument("--lr", type=float, default=2e-4)
p.add_argument("--pairs", type=int, default=4096)
p.add_argument("--threads", type=int, default=1)
p.add_argument("--batch", type=int, default=64)
a = p.parse_args()
torch.set_num_threads(a.threads)
t0 = time.monotonic()
teacher = export.load(a.file).eval()
pairs = teacher.reflow_pairs(a.pairs, generator=torch.Generator().manual_seed(0), uncond_frac=1.0, sampler="heun",
                             steps=8, guidance=0.0)
print(json.dumps({"pair_seconds": round(time.monotonic() - t0, 1)}), flush=True)
cfg = dataclasses.replace(teacher.config, adv_steps=a.steps, adv_grad_steps=a.grad_steps, adv_loss_weight=a.weight)
m = FlowModel(cfg)
m.load_state_dict(teacher.state_dict(), strict=False)
m.start_adversarial()
tc = TrainConfig(out=str(a.out), **{**ADV_DEFAULTS, "batch_size": a.batch}, lr=a.lr,
                 time_budget=a.seconds - (time.monotonic() - t0), progress=False, tensorboard=False, log_every=50)
images = load_images("fashion-mnist").train.images
tr = Trainer(m, tc, AdversarialBatches(images, pairs.noise, pairs.target, a.batch), None)
path = tr.fit()
print(json.dumps({"model": str(path), "steps": tr.step, "seconds": round(time.monotonic() - t0)}), flush=True)
