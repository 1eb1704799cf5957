"""VAE training seconds per epoch: genloom's Trainer vs the pytorch/examples `vae/main.py` recipe, side by side.

The reference is rebuilt here faithfully (torchvision does not import beside this torch build): the same MLP
(784→400→20, 20→400→784), Adam lr 1e-3, batch 128, summed BCE + KL, and its data path — a map-style Dataset
that turns each uint8 image into a PIL image and then into a float tensor (torchvision's MNIST +
``transforms.ToTensor()``), batched by a ``DataLoader(shuffle=True)`` with no workers (its CPU setting).
Its epoch is main.py's: ``train(epoch)`` then ``test(epoch)`` over the 10,000 test images (the sample/
comparison PNGs it also writes are left out). genloom's epoch is the Trainer's, validation included. Runs alternate
(ref, genloom, ref, genloom, …), each epoch in a fresh process after 10 untimed warm-up steps (so genloom's
allocator setting, train/allocator.py, never reaches the reference), and the medians are compared.

    python benchmarks/vae_epoch.py --epochs 3 [--matmul-precision auto|bf16|ieee] [--json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from genloom.data.batches import ImageBatches
from genloom.data.images import load_images
from genloom.models.vae import VAE, VAEConfig
from genloom.training.trainer import TrainConfig, Trainer


class RefVAE(nn.Module):  # pytorch/examples vae/main.py
    def __init__(self):
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(784, 400), nn.Linear(400, 20), nn.Linear(400, 20)
        self.fc3, self.fc4 = nn.Linear(20, 400), nn.Linear(400, 784)

    def forward(self, x):
        h1 = F.relu(self.fc1(x.view(-1, 784)))
        mu, logvar = self.fc21(h1), self.fc22(h1)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z)))), mu, logvar


class PILDataset(torch.utils.data.Dataset):  # torchvision MNIST.__getitem__ + ToTensor
    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        img = Image.fromarray(self.images[i].numpy(), mode="L")
        x = torch.from_numpy(np.array(img, np.uint8, copy=True)).view(1, 28, 28).float().div(255)
        return x, int(self.labels[i])


def ref_loss(model, x):
    recon, mu, logvar = model(x)
    bce = F.binary_cross_entropy(recon, x.view(-1, 784), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


def ref_epoch(model, opt, loader, test_loader) -> float:
    """main.py's epoch: train(epoch) then test(epoch) (its per-epoch evaluation, as genloom validates)."""
    t = time.perf_counter()
    model.train()
    for x, _ in loader:
        opt.zero_grad()
        ref_loss(model, x).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        for x, _ in test_loader:
            ref_loss(model, x)
    return time.perf_counter() - t


def _child(side: str, seed: int, precision: str) -> float:
    """One timed epoch of one side in this (fresh) process, after 10 untimed warm-up steps."""
    s = load_images("fashion-mnist")
    torch.manual_seed(seed)
    if side == "ref":
        full = torch.cat([s.train.images, s.val.images]), torch.cat([s.train.labels, s.val.labels])
        ref = RefVAE()
        ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-3)
        loader = torch.utils.data.DataLoader(PILDataset(*full), batch_size=128, shuffle=True)
        test_loader = torch.utils.data.DataLoader(PILDataset(s.test.images, s.test.labels), batch_size=128)
        for i, (x, _) in enumerate(loader):
            ref_opt.zero_grad()
            ref_loss(ref, x).backward()
            ref_opt.step()
            if i == 9:
                break
        return ref_epoch(ref, ref_opt, loader, test_loader)
    with tempfile.TemporaryDirectory() as d:
        model = VAE(VAEConfig())
        tp = {"ieee": "fp32"}.get(precision, precision)  # the benchmark's old names -> --precision
        warm = Trainer(model, TrainConfig(out=d, steps=10, progress=False, seed=seed, precision=tp),
                       ImageBatches(s.train, 128))
        warm._loop()
        cfg = TrainConfig(out=d, epochs=1, batch_size=128, lr=1e-3, schedule="wsd", betas=(0.9, 0.99),
                          progress=False, seed=seed, precision=tp)
        tr = Trainer(model, cfg, ImageBatches(s.train, 128), ImageBatches(s.val, 1000, shuffle=False))
        t = time.perf_counter()
        tr._loop()
        return time.perf_counter() - t


def _run_child(side: str, seed: int, precision: str) -> float:
    out = subprocess.run([sys.executable, __file__, "--child", side, "--seed", str(seed), "--matmul-precision",
                          precision], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["seconds"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=3, help="rounds: one epoch of each side per round, alternating")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--matmul-precision", default="auto",
                    help="genloom's float32 matmuls: auto (the VAE recipe's default: bf16 on AMX/AVX512-BF16 "
                         "CPUs), bf16 or ieee; a comma-separated list (ieee,bf16) times each in every round")
    ap.add_argument("--child", choices=("ref", "genloom"), default=None, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps({"seconds": _child(args.child, args.seed, args.matmul_precision)}))
        return
    precisions = [p.strip() for p in args.matmul_precision.split(",") if p.strip()]
    for p in precisions:
        if p not in ("auto", "bf16", "ieee"):
            ap.error(f"--matmul-precision: {p!r} is not one of auto, bf16, ieee")
    s = load_images("fashion-mnist")
    ref_times: list[float] = []
    ours: dict[str, list[float]] = {p: [] for p in precisions}
    for e in range(args.epochs):  # each epoch in a fresh process: genloom's allocator setting stays out of ref's
        ref_times.append(_run_child("ref", e, "ieee"))
        for p in precisions:
            ours[p].append(_run_child("genloom", e, p))
    ref_images = len(s.train) + len(s.val)
    r = statistics.median(ref_times)
    res: dict = {"reference_s_per_epoch": round(r, 3), "reference_images": ref_images, "genloom_images": len(s.train),
                 "genloom_includes_validation": True, "rounds": args.epochs, "threads": torch.get_num_threads(),
                 "reference_runs": [round(v, 2) for v in ref_times], "genloom": {}}
    for p, times in ours.items():
        # the speed-up of each round (ref and genloom measured back to back), then the median over rounds
        per_round = statistics.median(rt / t for rt, t in zip(ref_times, times))
        res["genloom"][p] = {"s_per_epoch": round(statistics.median(times), 3), "runs": [round(v, 2) for v in times],
                             "speedup_median_of_rounds": round(per_round, 2),
                             "speedup_of_medians": round(r / statistics.median(times), 2)}
    if args.json:
        print(json.dumps(res))
        return
    print(f"| recipe | s/epoch (median of {args.epochs}) | images/epoch | speedup (median of rounds) |")
    print("|---|---|---|---|")
    print(f"| pytorch/examples vae/main.py (DataLoader) | {r:.2f} | {ref_images} | 1 |")
    for p, g in res["genloom"].items():
        print(f"| genloom Trainer (incl. validation), --matmul-precision {p} | {g['s_per_epoch']:.2f} | "
              f"{len(s.train)} | {g['speedup_median_of_rounds']:.2f}x |")
    print(f"\nruns: ref {res['reference_runs']}, " + ", ".join(f"{p} {g['runs']}" for p, g in res["genloom"].items()))


if __name__ == "__main__":
    main()
