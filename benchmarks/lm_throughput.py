"""Training-step throughput of LM configurations, interleaved in one process (CPU seconds: steadier than wall
time on a shared machine), plus the attention kernel alone in fp32 and bf16.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lm_throughput.py --seconds 150 --threads 1

"nano-like" is nanoGPT's CPU recipe shape: batch 12 × 64, learned positions, fp32, foreach (unfused) AdamW.
Each round runs 2 steps of every configuration; medians over rounds, with the interquartile range.
"""
from __future__ import annotations

import argparse
import math
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

from genloom.models.transformer import LMConfig, TransformerLM

CONFIGS: dict[str, dict] = {
    "nano-like fp32 B12": dict(B=12, amp=False, fused=False, pos="learned"),
    "bf16 B16 rope": dict(B=16, amp=True),
    "bf16 B32 rope": dict(B=32, amp=True),
    "fp32 B32 rope": dict(B=32, amp=False),
    "bf16 B32 rope 3 layers": dict(B=32, amp=True, L=3),
}


def make_step(*, B: int, amp: bool, T: int = 64, L: int = 4, C: int = 128, H: int = 4, fused: bool = True,
              pos: str = "rope") -> tuple[Callable[[], None], int]:
    cfg = LMConfig(vocab_size=65, block_size=T, n_layer=L, n_head=H, n_embd=C, pos=pos)
    m = TransformerLM(cfg, [chr(33 + i) for i in range(65)]).train()
    m.autocast_dtype = torch.bfloat16 if amp else None
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3, fused=fused, foreach=None if fused else True)
    x, y = torch.randint(65, (B, T)), torch.randint(65, (B, T))

    def step() -> None:
        out = m.loss((x, y))
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0, foreach=True)
        opt.step()
    return step, B * T


def attention_kernels(reps: int = 12) -> None:
    B, nh, T, hs = 32, 4, 64, 32
    mask = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)

    def manual(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)  # (B, nh, T, T)
        return F.softmax(att.masked_fill(mask, float("-inf")), dim=-1) @ v

    def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    for dt in (torch.float32, torch.bfloat16):
        q, k, v = (torch.randn(B, nh, T, hs, dtype=dt, requires_grad=True) for _ in range(3))
        for name, f in (("sdpa", sdpa), ("manual", manual)):
            ts = []
            for _ in range(reps):
                c0 = time.process_time()
                f(q, k, v).sum().backward()
                ts.append(time.process_time() - c0)
            print(f"attention fwd+bwd {str(dt):15s} {name:7s} {statistics.median(ts) * 1000:7.2f} cpu-ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=150)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    attention_kernels()
    steps = {k: make_step(**v) for k, v in CONFIGS.items()}
    times: dict[str, list[float]] = {k: [] for k in CONFIGS}
    for f, _ in steps.values():
        f()
    t_end = time.time() + args.seconds
    while time.time() < t_end:
        for k, (f, _) in steps.items():
            c0 = time.process_time()
            f()
            f()
            times[k].append((time.process_time() - c0) / 2)
    base = None
    for k, ts in times.items():
        ts.sort()
        med = statistics.median(ts)
        tps = steps[k][1] / med
        base = base or tps
        print(f"{k:24s} {med * 1000:7.1f} cpu-ms/step {tps:8.0f} tokens/cpu-s  x{tps / base:.2f}  "
              f"(rounds {len(ts)}, IQR {ts[len(ts) // 4] * 1000:.0f}-{ts[3 * len(ts) // 4] * 1000:.0f} ms)")


if __name__ == "__main__":
    main()
