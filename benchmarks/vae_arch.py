"""VAE architecture search at a fixed number of epochs: test −ELBO, IWAE (k = 100, first 2,000 test images) and
the training CPU seconds of each variant (one JSON line each; one thread, oneDNN bf16 matmuls, AdamW fused,
β = (0.9, 0.99), wsd decaying over the last 25 % of steps, the recipe's output-bias init, 55,000 training images).
CPU seconds, not wall seconds, so that variants measured at different loads compare (a shared machine inflates
both somewhat; compare within one invocation).

    OMP_NUM_THREADS=1 python benchmarks/vae_arch.py \\
        '{"enc_hidden": [1024, 512], "dec_hidden": [512, 1024], "latent": 50, "B": 512, "lr": 3e-3, "warmup": 50}'

Knobs: enc_hidden, dec_hidden, latent, activation, B (batch), lr (peak), b2, epochs (default 10), decay_frac,
warmup (steps), iwae (false: skip the IWAE bound), seed.
"""
import json
import sys
import time

import torch

from genloom.data.images import ImageData, load_images
from genloom.eval.elbo import evaluate_vae
from genloom.models.vae import VAE, VAEConfig
from genloom.training.allocator import keep_freed_memory

keep_freed_memory()
torch.set_num_threads(1)
EXACT = torch.backends.mkldnn.matmul.fp32_precision  # torch's default: exact fp32 (used for evaluation)
torch.backends.mkldnn.matmul.fp32_precision = "bf16"  # training matmuls in bf16 inside oneDNN
SPLITS = load_images("fashion-mnist")
TRAIN = SPLITS.train.images.float().div(255).reshape(-1, 784)  # (55000, 784)


def run(v: dict) -> dict:
    torch.manual_seed(v.get("seed", 0))
    kw = {k: v[k] for k in ("latent", "activation") if k in v}
    kw.update({k: tuple(v[k]) for k in ("enc_hidden", "dec_hidden") if k in v})
    m = VAE(VAEConfig(**kw))
    m.init_output_bias(TRAIN.mean(0))
    lr, B, epochs = v.get("lr", 1e-3), v.get("B", 128), v.get("epochs", 10)
    opt = torch.optim.AdamW(m.parameters(), lr=lr, betas=(0.9, v.get("b2", 0.99)), weight_decay=0, fused=True)
    spe = len(TRAIN) // B
    total, df, wu = int(epochs * spe), v.get("decay_frac", 0.25), v.get("warmup", 0)
    gen = torch.Generator().manual_seed(0)
    step, c0 = 0, time.process_time()
    m.train()
    while step < total:
        order = torch.randperm(len(TRAIN), generator=gen)
        for b in range(min(spe, total - step)):
            p = step / total
            f = (step + 1) / wu if step < wu else (1.0 if p <= 1 - df else (1 - p) / df)  # warmup, hold, decay
            for g in opt.param_groups:
                g["lr"] = lr * f
            out = m.loss((TRAIN[order[b * B:(b + 1) * B]], None))
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            step += 1
    cpu = time.process_time() - c0
    torch.backends.mkldnn.matmul.fp32_precision = EXACT
    res = {"variant": v, "cpu_s": round(cpu, 1), "cpu_s_per_epoch": round(cpu / epochs, 2),
           "test_nelbo": round(evaluate_vae(m, SPLITS.test, iwae_k=0)["nelbo"], 2)}
    if v.get("iwae", True):
        r = evaluate_vae(m, ImageData(SPLITS.test.images[:2000], SPLITS.test.labels[:2000]), iwae_k=100)
        res["test2k_nelbo"], res["test2k_iwae"] = round(r["nelbo"], 2), round(r["iwae_nll"], 2)
    torch.backends.mkldnn.matmul.fp32_precision = "bf16"
    return res


if __name__ == "__main__":
    for arg in sys.argv[1:] or ["{}"]:
        print(json.dumps(run(json.loads(arg))), flush=True)
