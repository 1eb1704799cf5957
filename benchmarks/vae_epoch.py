"""VAE training seconds per epoch: genloom's Trainer vs the pytorch/examples `vae/main.py` recipe, side by side.

The reference is rebuilt here faithfully (torchvision does not import beside this torch build): the same MLP
(784→400→20, 20→400→784), Adam lr 1e-3, batch 128, summed BCE + KL, and its data path — a map-style Dataset
that turns each uint8 image into a PIL image and then into a float tensor (torchvision's MNIST +
``transforms.ToTensor()``), batched by a ``DataLoader(shuffle=True)`` with no workers (its CPU setting).
Its epoch is main.py's: ``train(epoch)`` then ``test(epoch)`` over the 10,000 test images (the sample/
comparison PNGs it also writes are left out). genloom's epoch is the Trainer's, validation included. Runs alternate
(ref, genloom, ref, genloom, …), each epoch in a fresh process after 10 untimed warm-up steps (so genloom's
allocator setting, train/allocator.py, never reaches the reference), and the medians are compared.

    python benchmarks/vae_epoch.py --epochs 3 [--amp off|bf16|auto] [--json]
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
from genloom.models.lowp import fast_bf16_available
from genloom.models.vae import VAE, VAEConfig
from genloom.train.trainer import TrainConfig, Trainer


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


def _child(side: str, seed: int, amp: str) -> float:
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
        model.autocast_dtype = torch.bfloat16 if amp == "bf16" or (amp == "auto" and fast_bf16_available()) else None
        warm = Trainer(model, TrainConfig(out=d, steps=10, progress=False, seed=seed), ImageBatches(s.train, 128))
        warm._loop()
        cfg = TrainConfig(out=d, epochs=1, batch_size=128, lr=1e-3, schedule="wsd", betas=(0.9, 0.99),
                          progress=False, seed=seed)
        tr = Trainer(model, cfg, ImageBatches(s.train, 128), ImageBatches(s.val, 1000, shuffle=False))
        t = time.perf_counter()
        tr._loop()
        return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=3, help="epochs of each, alternating")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--amp", choices=("auto", "bf16", "off"), default="off",
                    help="genloom's training matmuls: off (the recipe default, fp32), bf16, or auto (bf16 where the "
                         "CPU has AMX / AVX512-BF16)")
    ap.add_argument("--child", choices=("ref", "genloom"), default=None, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps({"seconds": _child(args.child, args.seed, args.amp)}))
        return
    s = load_images("fashion-mnist")
    ours_times: list[float] = []
    ref_times: list[float] = []
    for e in range(args.epochs):  # each epoch in a fresh process: genloom's allocator setting stays out of ref's
        for side, times in (("ref", ref_times), ("genloom", ours_times)):
            out = subprocess.run([sys.executable, __file__, "--child", side, "--seed", str(e), "--amp", args.amp],
                                 check=True, capture_output=True, text=True).stdout
            times.append(json.loads(out.strip().splitlines()[-1])["seconds"])
    ref_images = len(s.train) + len(s.val)
    r, o = statistics.median(ref_times), statistics.median(ours_times)
    res = {"reference_s_per_epoch": round(r, 3), "reference_images": ref_images,
           "genloom_s_per_epoch": round(o, 3), "genloom_images": len(s.train), "genloom_includes_validation": True,
           "speedup": round(r / o, 2), "runs": args.epochs, "threads": torch.get_num_threads(), "amp": args.amp,
           "reference_runs": [round(v, 2) for v in ref_times], "genloom_runs": [round(v, 2) for v in ours_times]}
    if args.json:
        print(json.dumps(res))
    else:
        print(f"| recipe | s/epoch (median of {args.epochs}) | images/epoch |\n|---|---|---|")
        print(f"| pytorch/examples vae/main.py (DataLoader) | {r:.2f} | {ref_images} |")
        print(f"| genloom Trainer (incl. validation, --amp {args.amp}) | {o:.2f} | {len(s.train)} |")
        print(f"\nspeedup: {r / o:.2f}x  (runs: ref {res['reference_runs']}, genloom {res['genloom_runs']})")


if __name__ == "__main__":
    main()
