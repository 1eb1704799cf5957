"""Next-character loss of an LM on a text: mean cross-entropy in nats/char and bits per char.

The text is cut into non-overlapping windows of ``block_size`` characters (the last one shorter); inside a
window the prediction of character t sees characters 0..t-1 of that window. Every character but the first is
predicted exactly once, so this is the full-split loss, not a sample of it.
    loss = -(1/N) Σ_t log p(c_t | window context)      bpc = loss / ln 2
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from genloom.data.text import SequentialWindows
from genloom.models.transformer import TransformerLM


@torch.inference_mode()
def evaluate_lm(model: TransformerLM, tokens: torch.Tensor, *, batch_size: int = 64) -> dict[str, float | int]:
    """tokens: 1-D int64 ids of the text → {"val_loss", "bpc", "chars"} (chars = predictions scored)."""
    model.eval()
    src = SequentialWindows(tokens, block_size=model.config.block_size, batch_size=batch_size)
    src.to(next(model.parameters()).device)
    total, n = 0.0, 0
    for x, y in src.epoch():
        logits = model(x)  # (B, T, vocab)
        total += float(F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1), reduction="sum"))
        n += y.numel()
    loss = total / n
    return {"val_loss": loss, "bpc": loss / math.log(2), "chars": n}
