"""Diffusion Transformer (Peebles & Xie 2023) over a spatial latent, conditioned on time and class by adaLN-Zero.

    z (B, C, H, W) → zero-pad to a multiple of p → p×p patches → tokens (B, T = ⌈H/p⌉², C·p²) → linear → D, + 2-D sin-cos positions (learned)
    c = MLP(sinusoidal(1000·t)) + embed(y)           (y = num_classes is the "no class" token for guidance)
        [+ embed(k) for a shortcut model: the step-size level k, step d = 2^−k; ``models/flow.py``]
    n_layer blocks:  (shift, scale, gate) ×2 = Linear(SiLU(c))          — initialised to ZERO (adaLN-Zero)
                     x ← x + gate₁ · attn(LN(x)·(1 + scale₁) + shift₁)
                     x ← x + gate₂ · mlp(LN(x)·(1 + scale₂) + shift₂)
    final: LN(x)·(1 + scale) + shift → linear (zero-initialised) → unpatchify → v (B, C, H, W)

With every gate zero at initialisation each block is the identity, and with the zero final layer the network
starts by predicting v = 0. Attention and MLP are the character LM's (``models/transformer.py``), run without the
causal mask: every latent position sees every other.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from genloom.models.transformer import MLP, CausalSelfAttention, LMConfig


class SelfAttention(CausalSelfAttention):
    """The LM's multi-head attention (same q/k/v and output projections), bidirectional:
    softmax(q kᵀ / √hs) v over all T tokens, no mask."""

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        q, k, v = self._qkv(x, rope)  # each (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, nh, T, hs)
        return self._out(y)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """LN(x)·(1 + scale) + shift with per-sample shift/scale (B, D) broadcast over the T tokens of x (B, T, D)."""
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


class DiTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, tokens: int) -> None:
        super().__init__()
        lc = LMConfig(vocab_size=1, block_size=tokens, n_layer=1, n_head=heads, n_embd=dim, bias=True)
        self.ln_1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(lc)
        self.ln_2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = MLP(lc)
        self.ada = nn.Linear(dim, 6 * dim)  # c → (shift₁, scale₁, gate₁, shift₂, scale₂, gate₂)
        nn.init.zeros_(self.ada.weight)  # adaLN-Zero: all six start at 0, so the block starts as the identity
        nn.init.zeros_(self.ada.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        s1, sc1, g1, s2, sc2, g2 = self.ada(F.silu(c)).chunk(6, dim=1)  # each (B, D)
        x = x + g1[:, None, :] * self.attn(modulate(self.ln_1(x), s1, sc1))  # (B, T, D)
        return x + g2[:, None, :] * self.mlp(modulate(self.ln_2(x), s2, sc2))


def timestep_embedding(t: torch.Tensor, dim: int, *, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of 1000·t (t in [0, 1]): [cos(1000t·ω_i), sin(1000t·ω_i)], ω_i = max_period^(−i/half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    ang = 1000.0 * t.float()[:, None] * freqs[None, :]  # (B, half)
    return torch.cat([torch.cos(ang), torch.sin(ang)], dim=1)  # (B, 2·half)


def sincos_2d(dim: int, h: int, w: int) -> torch.Tensor:
    """Fixed 2-D sin-cos positions (MAE / DiT): half the channels encode the row, half the column. (h·w, dim)."""
    def one(pos: torch.Tensor, d: int) -> torch.Tensor:
        omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float32) / (d // 2))
        ang = pos.float()[:, None] * omega[None, :]  # (N, d/2)
        return torch.cat([torch.sin(ang), torch.cos(ang)], dim=1)  # (N, d)

    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.cat([one(rows.flatten(), dim // 2), one(cols.flatten(), dim - dim // 2)], dim=1)  # (hw, dim)


class DiT(nn.Module):
    def __init__(self, *, in_channels: int, size: int, patch: int, dim: int, depth: int, heads: int,
                 num_classes: int, levels: int = 0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.in_channels, self.size, self.patch, self.num_classes = in_channels, size, patch, num_classes
        self.grid = -(-size // patch)  # the latent is zero-padded to grid·patch (7 → 8 for patch 2)
        tokens = self.grid ** 2
        self.x_embed = nn.Linear(in_channels * patch * patch, dim)
        self.pos = nn.Parameter(sincos_2d(dim, self.grid, self.grid)[None])  # (1, T, D), learned from sin-cos
        self.t_embed = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.y_embed = nn.Embedding(num_classes + 1, dim)  # index num_classes = "no class" (dropped label)
        nn.init.normal_(self.y_embed.weight, std=0.02)
        self.levels = levels
        self.level_embed = nn.Embedding(levels, dim) if levels else None  # shortcut step-size level k → d = 2^−k
        if self.level_embed is not None:
            nn.init.normal_(self.level_embed.weight, std=0.02)
        self.blocks = nn.ModuleList(DiTBlock(dim, heads, tokens) for _ in range(depth))
        self.ln_f = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada_f = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, in_channels * patch * patch)
        for m in (self.ada_f, self.out):  # zero final layer: v = 0 at initialisation
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, z: torch.Tensor, t: torch.Tensor, y: torch.Tensor, level: torch.Tensor | None = None
                ) -> torch.Tensor:
        """z (B, C, H, W), t (B,) in [0, 1], y (B,) class index or num_classes for none → v (B, C, H, W).
        ``level`` (B,) is a shortcut model's step-size level (default the finest, levels − 1: the velocity)."""
        B, C, H, W = z.shape
        p, g = self.patch, self.grid
        pad = g * p - H
        if pad:
            z = F.pad(z, (0, pad, 0, pad))  # (B, C, g·p, g·p)
        x = z.reshape(B, C, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(B, g * g, C * p * p)  # (B, T, C·p²)
        x = self.x_embed(x) + self.pos  # (B, T, D)
        c = self.t_embed(timestep_embedding(t, x.shape[-1])) + self.y_embed(y)  # (B, D)
        if self.level_embed is not None:
            k = torch.full_like(y, self.levels - 1) if level is None else level
            c = c + self.level_embed(k)
        for blk in self.blocks:
            x = blk(x, c)
        shift, scale = self.ada_f(F.silu(c)).chunk(2, dim=1)  # each (B, D)
        x = self.out(modulate(self.ln_f(x), shift, scale))  # (B, T, C·p²)
        x = x.reshape(B, g, g, C, p, p).permute(0, 3, 1, 4, 2, 5)  # (B, C, g, p, g, p)
        return x.reshape(B, C, g * p, g * p)[:, :, :H, :W]  # (B, C, H, W): padding cropped
