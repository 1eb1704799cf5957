"""Decoder-only character Transformer LM (GPT-2 shape, as in karpathy/nanoGPT ``model.py``).

token embedding (+ learned positions, or RoPE inside attention) → n_layer pre-norm blocks
[x + attn(ln(x)); x + mlp(ln(x))] → final LayerNorm → output head tied to the token embedding.
Attention is multi-head causal self-attention: q, k, v split into n_head heads of size hs = n_embd / n_head,
softmax(q kᵀ / √hs + causal mask) v per head, heads concatenated and projected.

Generation with a pre-allocated KV cache lives in ``lm_generate.py``; this module only provides the cached
forward pass (``forward_cached``) that it drives.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from genloom.data.text import CharTokenizer
from genloom.errors import ConfigError
from genloom.models.base import GenerativeModel, LossOutput
from genloom.models.kv_cache import KVCache


@dataclass(frozen=True)
class LMConfig:
    vocab_size: int = 65
    block_size: int = 64  # maximum context length
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False  # biases in Linear layers and LayerNorms
    pos: str = "learned"  # "learned" absolute positions | "rope" rotary embeddings (Su et al. 2021)
    mlp: str = "gelu"  # "gelu": 4C hidden | "swiglu": SiLU(xW)⊙(xV) with 8C/3 hidden (Shazeer 2020)
    rope_base: float = 10000.0

    def __post_init__(self) -> None:
        if min(self.vocab_size, self.block_size, self.n_layer, self.n_head, self.n_embd) < 1:
            raise ConfigError("vocab_size, block_size, n_layer, n_head and n_embd must be ≥ 1")
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.pos not in ("learned", "rope"):
            raise ConfigError(f"pos must be 'learned' or 'rope', not {self.pos!r}")
        if self.pos == "rope" and (self.n_embd // self.n_head) % 2:
            raise ConfigError("rope needs an even head size (n_embd / n_head)")
        if self.mlp not in ("gelu", "swiglu"):
            raise ConfigError(f"mlp must be 'gelu' or 'swiglu', not {self.mlp!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("dropout must be in [0, 1)")


def rope_tables(positions: torch.Tensor, head_size: int, base: float, dtype: torch.dtype
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of θ_i·p with θ_i = base^(-2i/hs), i < hs/2; positions (..., T) → each (..., T, hs/2)."""
    inv_freq = base ** (-torch.arange(0, head_size, 2, device=positions.device, dtype=torch.float32) / head_size)
    ang = positions.float()[..., None] * inv_freq  # (..., T, hs/2)
    return ang.cos().to(dtype), ang.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x1, x2) of the two head halves by angle θ·p: (x1 cos − x2 sin, x1 sin + x2 cos).
    x: (B, nh, T, hs); cos/sin broadcast as (B or 1, 1, T, hs/2)."""
    x1, x2 = x.chunk(2, dim=-1)  # each (B, nh, T, hs/2)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, c: LMConfig) -> None:
        super().__init__()
        self.n_head, self.hs, self.dropout = c.n_head, c.n_embd // c.n_head, c.dropout
        self.c_attn = nn.Linear(c.n_embd, 3 * c.n_embd, bias=c.bias)  # q, k, v for all heads at once
        self.c_proj = nn.Linear(c.n_embd, c.n_embd, bias=c.bias)
        self.resid_drop = nn.Dropout(c.dropout)

    def _qkv(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # each (B, T, C)
        q = q.view(B, T, self.n_head, self.hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, self.hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, self.hs).transpose(1, 2)  # (B, nh, T, hs)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        return q, k, v

    def _out(self, y: torch.Tensor) -> torch.Tensor:
        B, nh, T, hs = y.shape
        y = y.transpose(1, 2).reshape(B, T, nh * hs)  # (B, T, C): heads side by side
        return self.resid_drop(self.c_proj(y))

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        q, k, v = self._qkv(x, rope)
        dtype = q.dtype
        if dtype == torch.bfloat16 and q.device.type == "cpu":
            # the CPU flash-attention kernel is ~3.5x slower in bf16 than in fp32 (fwd+bwd, B=32, T=64, hs=32;
            # docs/benchmarks.md): attend in fp32, keep the projections in bf16
            q, k, v = q.float(), k.float(), v.float()
        # softmax(q kᵀ / √hs + M) v with M[i, j] = -∞ for j > i (no peeking at later characters)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)  # (B, nh, T, hs)
        return self._out(y.to(dtype))

    def forward_cached(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                       k_cache: torch.Tensor, v_cache: torch.Tensor, dec: "DecodeInfo | None") -> torch.Tensor:
        """Cached attention for this layer; k_cache/v_cache: (R, nh, block_size, hs) for the R rows of x.

        ``dec is None``: prefill — x holds each row's tokens from position 0; writes k, v at 0..T-1.
        ``dec``: decode — x is (R, 1, C), the token at position dec.pos[r]; writes there, attends to 0..pos[r].
        """
        q, k, v = self._qkv(x, rope)
        if dec is None:
            T = x.shape[1]
            k_cache[:, :, :T] = k
            v_cache[:, :, :T] = v
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (R, nh, T, hs)
            return self._out(y)
        if dec.single is not None:  # one row: a plain slice write, no index_put
            k_cache[0, :, dec.single] = k[0, :, 0]  # (nh, hs)
            v_cache[0, :, dec.single] = v[0, :, 0]
        else:
            k_cache[dec.rows, :, dec.pos] = k[:, :, 0]  # (R, nh, hs) into row r at position pos[r]
            v_cache[dec.rows, :, dec.pos] = v[:, :, 0]
        keys, vals = k_cache[:, :, :dec.length], v_cache[:, :, :dec.length]  # (R, nh, L, hs): the filled prefix
        y = F.scaled_dot_product_attention(q, keys, vals, attn_mask=dec.mask)  # (R, nh, 1, hs)
        return self._out(y)


@dataclass
class DecodeInfo:
    """Per-step decode positions, computed once per forward (not per layer)."""

    pos: torch.Tensor  # (R,) position of each row's new token
    rows: torch.Tensor  # (R,) = arange(R)
    length: int  # L = max(pos) + 1 cache positions are read
    mask: torch.Tensor | None  # (R, 1, 1, L) bool, key j allowed iff j ≤ pos[r]; None when all are allowed
    single: int | None  # the position when R == 1

    @classmethod
    def build(cls, pos: torch.Tensor) -> "DecodeInfo":
        p = pos.tolist()
        L = max(p) + 1
        if len(p) == 1:
            return cls(pos, pos.new_zeros(1), L, None, p[0])
        allowed = torch.arange(L, device=pos.device)[None, :] <= pos[:, None]  # (R, L)
        mask = None if min(p) == L - 1 else allowed[:, None, None, :]
        return cls(pos, torch.arange(len(p), device=pos.device), L, mask, None)


class MLP(nn.Module):
    def __init__(self, c: LMConfig) -> None:
        super().__init__()
        self.swiglu = c.mlp == "swiglu"
        hidden = 4 * c.n_embd if not self.swiglu else int(8 * c.n_embd / 3 + 63) // 64 * 64  # same params as 4C
        self.c_fc = nn.Linear(c.n_embd, hidden * (2 if self.swiglu else 1), bias=c.bias)
        self.c_proj = nn.Linear(hidden, c.n_embd, bias=c.bias)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)
        if self.swiglu:
            a, b = h.chunk(2, dim=-1)  # each (B, T, hidden)
            h = F.silu(a) * b  # SwiGLU(x) = SiLU(x W) ⊙ (x V)
        else:
            h = F.gelu(h)
        return self.drop(self.c_proj(h))


class Block(nn.Module):
    def __init__(self, c: LMConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(c.n_embd, bias=c.bias)
        self.attn = CausalSelfAttention(c)
        self.ln_2 = nn.LayerNorm(c.n_embd, bias=c.bias)
        self.mlp = MLP(c)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), rope)  # pre-norm residual
        return x + self.mlp(self.ln_2(x))


class TransformerLM(GenerativeModel):
    """kind "lm". ``encode``/``decode`` use the character vocabulary stored with the model."""

    kind: ClassVar[str] = "lm"
    config_class: ClassVar[type] = LMConfig

    def __init__(self, config: LMConfig, vocab: list[str] | None = None) -> None:
        super().__init__()
        self.config = c = config
        if vocab is not None and len(vocab) != c.vocab_size:
            raise ValueError(f"vocabulary has {len(vocab)} characters but vocab_size is {c.vocab_size}")
        self.tokenizer = CharTokenizer(vocab) if vocab is not None else None
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)
        self.wpe = nn.Embedding(c.block_size, c.n_embd) if c.pos == "learned" else None
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.n_embd, bias=c.bias)
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.tie_weights()
        self.autocast_dtype: torch.dtype | None = None  # set by the recipe for bf16 training; not exported
        if not any(p.is_meta for p in self.parameters()):
            self.apply(self._init_weights)
            # GPT-2: residual projections scaled by 1/√(2·n_layer) so the residual stream's variance stays O(1)
            for name, p in self.named_parameters():
                if name.endswith("c_proj.weight"):
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * c.n_layer))

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def tie_weights(self) -> None:
        self.lm_head.weight = self.wte.weight  # weight tying (Press & Wolf 2017): logits = h · Eᵀ

    # -- export -----------------------------------------------------------------------------------------------
    @classmethod
    def from_metadata(cls, config: LMConfig, metadata: dict[str, str]) -> "TransformerLM":
        if "genloom.vocab" not in metadata:
            raise ValueError("an lm file needs genloom.vocab metadata (JSON list of characters)")
        return cls(config, CharTokenizer.from_json(metadata["genloom.vocab"]).chars)

    def export_extras(self) -> dict[str, str]:
        return {"genloom.vocab": self._tok().to_json()} if self.tokenizer is not None else {}

    # -- tokenizer --------------------------------------------------------------------------------------------
    def _tok(self) -> CharTokenizer:
        if self.tokenizer is None:
            raise ValueError("this model has no vocabulary; build it with TransformerLM(config, vocab)")
        return self.tokenizer

    @property
    def vocab(self) -> list[str]:
        return self._tok().chars

    def encode(self, text: str, *, what: str = "prompt") -> list[int]:
        """Characters → ids; raises GenloomError naming a character outside the vocabulary."""
        return self._tok().encode(text, what=what)

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        return self._tok().decode(ids)

    # -- forward ------------------------------------------------------------------------------------------------
    def _rope(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.config.pos != "rope":
            return None
        cos, sin = rope_tables(positions, self.config.n_embd // self.config.n_head, self.config.rope_base, dtype)
        return cos[:, None], sin[:, None]  # (B or 1, 1, T, hs/2): broadcast over heads

    def _embed(self, idx: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx)  # (B, T, C)
        if self.wpe is not None:
            x = x + self.wpe(positions)  # positions (B or 1, T) → (B or 1, T, C)
        return self.drop(x)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (B, T) int64, T ≤ block_size → logits (B, T, vocab)."""
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}")
        positions = torch.arange(T, device=idx.device)[None]  # (1, T)
        x = self._embed(idx, positions)
        rope = self._rope(positions, x.dtype)
        for block in self.blocks:
            x = block(x, rope)
        return self.lm_head(self.ln_f(x))  # (B, T, vocab)

    def forward_cached(self, idx: torch.Tensor, cache: KVCache, rows: slice,
                       pos: torch.Tensor | None = None) -> torch.Tensor:
        """Forward with the KV cache rows ``rows`` (a slice, so that the cache is written through a view).

        Prefill (``pos is None``): idx (R, T) from position 0 → logits of the last position, (R, vocab).
        Decode: idx (R, 1) at positions ``pos`` (R,) → logits (R, vocab).
        """
        T = idx.shape[1]
        positions = torch.arange(T, device=idx.device)[None] if pos is None else pos[:, None]  # (1, T) | (R, 1)
        x = self._embed(idx, positions)
        rope = self._rope(positions, x.dtype)
        dec = DecodeInfo.build(pos) if pos is not None else None
        for i, block in enumerate(self.blocks):
            kc, vc = cache.k[i, rows], cache.v[i, rows]  # (R, nh, block_size, hs) views
            x = x + block.attn.forward_cached(block.ln_1(x), rope, kc, vc, dec)
            x = x + block.mlp(block.ln_2(x))
        return self.lm_head(self.ln_f(x[:, -1]))  # (R, vocab)

    # -- protocol -------------------------------------------------------------------------------------------------
    def loss(self, batch: Any) -> LossOutput:
        """Mean next-character cross-entropy (nats/char) over all B·T positions of an (x, y) batch."""
        x, y = batch
        with torch.autocast("cpu", dtype=self.autocast_dtype or torch.bfloat16,
                            enabled=self.autocast_dtype is not None and self.training and x.device.type == "cpu"):
            logits = self(x)  # (B, T, vocab)
        # CE = -log softmax(logits)[y], averaged over the B·T predictions
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))  # (B·T, vocab) vs (B·T,)
        return LossOutput(loss, {}, n=y.numel())

    @torch.no_grad()
    def generate(self, n: int, *, generator: torch.Generator | None = None, prompt: str = "\n",
                 max_new_tokens: int = 200, **sampling: Any) -> list[str]:
        """n continuations of ``prompt`` (see ``lm_generate.generate`` for the sampling options)."""
        from genloom.models.lm_generate import generate

        seed = int(torch.randint(2**31 - 1, (), generator=generator)) if generator is not None else None
        return generate(self, [prompt] * n, max_new_tokens=max_new_tokens, seed=seed, **sampling)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # tied weights counted once
