"""KV-cache generation vs recomputing the full context every step, side by side in one process.

    .venv/bin/python benchmarks/lm_kvcache.py [--model runs/lm-medium/model.safetensors] [--new 500] [--repeats 3]

Without --model, the medium preset's shape with random weights (speed does not depend on the weights).
Measures, interleaved so that machine noise hits all of them alike (medians of --repeats):
- batch 1, greedy, ``--new`` tokens: DecodeBatch (prefill + one token per step) vs ``generate_uncached``
  (full forward over the last block_size tokens per step, as nanoGPT's ``generate``);
- tokens/s of DecodeBatch at batch 1 and batch 16 (16 prompts of different lengths, sampled).
Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from genloom import export
from genloom.models.lm_generate import DecodeBatch, generate, generate_uncached
from genloom.models.transformer import LMConfig, TransformerLM
from genloom.recipes.lm import MODEL_DEFAULTS, PRESETS


def medium_random() -> TransformerLM:
    p = {**MODEL_DEFAULTS, **PRESETS["medium"]}
    cfg = LMConfig(vocab_size=65, block_size=p["block_size"], n_layer=p["n_layer"], n_head=p["n_head"],
                   n_embd=p["n_embd"])
    vocab = list("\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
    return TransformerLM(cfg, vocab).eval()


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process): on a shared machine the CPU time is the steadier one."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="an lm .safetensors file (default: medium shape, random)")
    ap.add_argument("--new", type=int, default=500, help="new tokens per generation")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = export.load(args.model) if args.model else medium_random()
    prompt = "ROMEO:\nWhat light through yonder window breaks?\n"
    ids = model.encode(prompt)
    prompts16 = [prompt[: 5 + 3 * i] for i in range(16)]  # 16 prompts of different lengths

    def cached() -> None:
        b = DecodeBatch(model, slots=1)
        s = b.add(ids, max_new_tokens=args.new, temperature=0)
        while not b.is_done(s):
            b.step()

    res: dict[str, list[tuple[float, float]]] = {"cached_b1": [], "uncached_b1": [], "cached_b16": []}
    with torch.no_grad():
        b = DecodeBatch(model, slots=1)  # same greedy tokens both ways (within one window)
        s = b.add(ids, max_new_tokens=20, temperature=0)
        while not b.is_done(s):
            b.step()
        assert b.tokens(s) == generate_uncached(model, ids, max_new_tokens=20)
        cached()  # warm-up
        for _ in range(args.repeats):
            res["cached_b1"].append(timed(cached))
            res["uncached_b1"].append(timed(lambda: generate_uncached(model, ids, max_new_tokens=args.new)))
            res["cached_b16"].append(timed(lambda: generate(model, prompts16, max_new_tokens=args.new,
                                                            temperature=0.8, top_k=40, seed=0)))
    out: dict = {
        "model": args.model or "medium preset shape, random weights",
        "config": {k: getattr(model.config, k) for k in ("n_layer", "n_head", "n_embd", "block_size")},
        "new_tokens": args.new, "repeats": args.repeats, "threads": torch.get_num_threads(),
    }
    for i, clock in enumerate(("wall", "cpu")):
        med = {k: statistics.median(x[i] for x in v) for k, v in res.items()}
        out[clock] = {
            "seconds_median": {k: round(v, 3) for k, v in med.items()},
            "seconds_all": {k: [round(x[i], 3) for x in v] for k, v in res.items()},
            "speedup_cache_vs_recompute_b1": round(med["uncached_b1"] / med["cached_b1"], 2),
            "tokens_per_s": {"cached_b1": round(args.new / med["cached_b1"], 1),
                             "uncached_b1": round(args.new / med["uncached_b1"], 1),
                             "cached_b16": round(16 * args.new / med["cached_b16"], 1)},
        }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
