"""``genloom train lm``: a character-level Transformer LM on any UTF-8 text (default: tinyshakespeare).

Split: first 90% train, last 10% validation (nanoGPT). Training draws random contiguous windows; validation is
the full validation split in non-overlapping windows (``genloom.eval.lm``), in float32.
Recipe: AdamW (β = 0.9, 0.99; weight decay on matrices only), linear warmup + cosine decay to 10%, global-norm
clip 1.0; ``--precision`` (default auto) decides bf16 autocast for the training step, measured per CPU.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import torch

from genloom import export
from genloom.data.text import (
    CharTokenizer,
    SequentialWindows,
    WindowBatches,
    corpus_ref,
    default_corpus,
    load_text,
    split_tokens,
)
from genloom.errors import ConfigError
from genloom.eval.lm import evaluate_lm
from genloom.models.transformer import LMConfig, TransformerLM
from genloom.recipes.common import Built, preset_value

HELP = "character-level Transformer LM (GPT: multi-head causal attention, KV-cache generation)"
DEFAULTS: dict[str, Any] = {"steps": 2000, "batch_size": 32, "lr": 2e-3, "betas": (0.9, 0.99),
                            "weight_decay": 0.1, "schedule": "warmup-cosine", "warmup_steps": 100,
                            "min_lr_ratio": 0.1, "grad_clip": 1.0, "val_every": 500, "log_every": 50}
MODEL_DEFAULTS: dict[str, Any] = {"block_size": 64, "n_layer": 4, "n_head": 4, "n_embd": 128, "dropout": 0.0,
                                  "bias": False, "pos": "learned", "mlp": "gelu"}
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"_doc": "3 layers × 4 heads × 128, block 64, RoPE; batch 16, lr 5e-3, 800 steps, one full "
                       "validation at the end: val ≤ 1.88 in about half of nanoGPT's CPU recipe (docs/benchmarks.md)",
              "steps": 800, "batch_size": 16, "lr": 5e-3, "warmup_steps": 30, "val_every": 800,
              "block_size": 64, "n_layer": 3, "n_head": 4, "n_embd": 128, "pos": "rope"},
    "medium": {"_doc": "4 layers × 192, block 256, RoPE, 19 minutes of training on 2 cores + a full validation",
               "steps": None, "time_budget": 1140.0, "batch_size": 16, "lr": 3e-3, "warmup_steps": 100, "val_every": 250,
               "val_batches": 4, "block_size": 256, "n_layer": 4, "n_head": 6, "n_embd": 192, "pos": "rope"},
}


def add_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("LM")
    g.add_argument("--data", type=Path, default=None,
                   help="UTF-8 training text (default: $GENLOOM_DATA/tinyshakespeare.txt if present, else "
                        "the Tiny Shakespeare copy shipped with genloom)")
    g.add_argument("--block-size", type=int, default=None, help="context length (default 64)")
    g.add_argument("--n-layer", type=int, default=None, help="Transformer blocks (default 4)")
    g.add_argument("--n-head", type=int, default=None, help="attention heads (default 4)")
    g.add_argument("--n-embd", type=int, default=None, help="model width (default 128)")
    g.add_argument("--dropout", type=float, default=None, help="dropout (default 0)")
    g.add_argument("--bias", action="store_true", default=None, help="biases in Linear and LayerNorm layers")
    g.add_argument("--pos", choices=("learned", "rope"), default=None, help="positional encoding (default learned)")
    g.add_argument("--mlp", choices=("gelu", "swiglu"), default=None, help="MLP type (default gelu)")


def _opt(args: argparse.Namespace, name: str) -> Any:
    from genloom.recipes import recipe

    return preset_value(args, recipe("lm"), name, MODEL_DEFAULTS[name])


def build(args: argparse.Namespace, tcfg) -> Built:
    path = args.data if args.data is not None else default_corpus()
    text = load_text(path)
    tok = CharTokenizer.from_text(text)
    tokens = torch.tensor(tok.encode(text, what=str(path)), dtype=torch.long)
    train, val = split_tokens(tokens)
    cfg = LMConfig(vocab_size=len(tok), block_size=_opt(args, "block_size"), n_layer=_opt(args, "n_layer"),
                   n_head=_opt(args, "n_head"), n_embd=_opt(args, "n_embd"), dropout=_opt(args, "dropout"),
                   bias=bool(_opt(args, "bias")), pos=_opt(args, "pos"), mlp=_opt(args, "mlp"))
    model = TransformerLM(cfg, tok.chars)
    val_batch = max(1, 8192 // cfg.block_size)  # windows per validation batch: 8192 characters
    if len(val) < 2:
        raise ConfigError(f"{path}: too short for a validation split ({len(tokens)} characters)")

    def after(out: Path, trainer) -> dict[str, Any]:
        res: dict[str, Any] = {"best_val_loss": round(trainer.best_val, 4) if math.isfinite(trainer.best_val)
                               else None, "best_step": trainer.best_step, "params": model.num_params()}
        if tcfg.val_batches is not None or res["best_val_loss"] is None:
            # validation saw part of the split, or never ran (a short --time-budget): score the export on all of it
            full = evaluate_lm(export.load(out), val, batch_size=val_batch)
            res.update(val_loss=round(full["val_loss"], 4), bpc=round(full["bpc"], 4))
        else:
            res.update(val_loss=res["best_val_loss"], bpc=round(trainer.best_val / math.log(2), 4))
        return res

    def text_sample(trainer) -> None:
        """After each validation interval: 200 characters from "\n" (seeded) as a TensorBoard text sample."""
        if getattr(trainer.log, "tb", None) is None:
            return
        model.eval()
        with torch.random.fork_rng(devices=[]):
            text = model.generate(1, generator=torch.Generator().manual_seed(1234), max_new_tokens=200,
                                  temperature=0.8)[0]
        model.train()
        trainer.log.text("samples", trainer.step, text)

    return Built(
        model=model,
        on_epoch_end=[text_sample],
        train=WindowBatches(train, batch_size=tcfg.batch_size, block_size=cfg.block_size,
                            steps=tcfg.val_every or 500),
        val=SequentialWindows(val, block_size=cfg.block_size, batch_size=val_batch),
        provenance={"dataset": Path(path).name, "data": corpus_ref(path), "train_chars": len(train),
                    "val_chars": len(val), "params": model.num_params()},
        after=after,
    )
