"""The pre-allocated key/value cache of ``TransformerLM.forward_cached`` (used by ``lm_generate``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from genloom.models.transformer import LMConfig


@dataclass
class KVCache:
    """Pre-allocated keys/values for ``slots`` sequences: k, v each (n_layer, slots, n_head, block_size, hs)."""

    k: torch.Tensor
    v: torch.Tensor

    @classmethod
    def empty(cls, config: "LMConfig", slots: int, *, device: str | torch.device = "cpu",
              dtype: torch.dtype = torch.float32) -> "KVCache":
        hs = config.n_embd // config.n_head
        shape = (config.n_layer, slots, config.n_head, config.block_size, hs)
        return cls(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))
