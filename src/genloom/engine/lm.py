"""The LM engine: a thin, validated wrapper over ``models/lm_generate.py`` (KV-cache decoding, continuous
batching). ``generate`` decodes a list of prompts together; ``stream`` yields one prompt's text as it comes.

The HTTP worker drives ``DecodeBatch`` itself (requests join and leave between steps) through ``engine.model``.
"""
from __future__ import annotations

from typing import Any, ClassVar, Iterator

import torch
from torch import nn

from genloom.engine.base import Engine, InputError, check_seed
from genloom.export import ModelFile

MAX_PROMPTS = 256
MAX_NEW_TOKENS = 10_000


class LMEngine(Engine):
    kind: ClassVar[str] = "lm"
    max_batch: int = 64  # decode slots: one batched single-token forward per step

    def __init__(self, model: nn.Module, header: ModelFile) -> None:
        self.model = model.eval()
        self.header = header
        self.backend = "eager"
        self.vocab: list[str] = list(model.vocab)
        self.block_size = int(model.config.block_size)

    def generate(self, prompts: list[str], *, max_new_tokens: int = 200, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 stop: list[str] | None = None, **unknown: Any) -> list[str]:
        """Continuations (never the prompt, never the stop string); prompt i samples with seed ``seed + i``."""
        from genloom.models.lm_generate import generate

        kw = self._check(prompts, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                         top_p=top_p, seed=seed, stop=stop, unknown=unknown)
        with torch.inference_mode():
            return generate(self.model, list(prompts), slots=min(len(prompts), self.max_batch), **kw)

    def stream(self, prompt: str, *, max_new_tokens: int = 200, temperature: float = 1.0, top_k: int | None = None,
               top_p: float | None = None, seed: int | None = None, stop: list[str] | None = None,
               **unknown: Any) -> Iterator[str]:
        """Yield the continuation piece by piece; the pieces join to ``generate([prompt], ...)[0]``."""
        from genloom.models.lm_generate import stream

        kw = self._check([prompt], max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                         top_p=top_p, seed=seed, stop=stop, unknown=unknown)
        gen = stream(self.model, prompt, **kw)
        while True:
            with torch.inference_mode():  # not across the yield: the consumer's own code runs outside it
                piece = next(gen, None)
            if piece is None:
                return
            yield piece

    def _check(self, prompts: Any, *, max_new_tokens: Any, temperature: Any, top_k: Any, top_p: Any, seed: Any,
               stop: Any, unknown: dict[str, Any]) -> dict[str, Any]:
        if unknown:
            raise InputError(f"unknown generation option(s): {', '.join(sorted(unknown))}")
        if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
            raise InputError("prompts must be a list of strings; use [prompt] for one")
        if not 1 <= len(prompts) <= MAX_PROMPTS:
            raise InputError(f"prompts must hold between 1 and {MAX_PROMPTS} strings, got {len(prompts)}")
        vocab = set(self.vocab)
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise InputError(f"prompts[{i}] must be a string, got {type(p).__name__}")
            bad = next((ch for ch in p if ch not in vocab), None)
            if bad is not None:
                raise InputError(f"prompt: character {bad!r} is not in the model's vocabulary")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or \
                not 0 <= max_new_tokens <= MAX_NEW_TOKENS:
            raise InputError(f"max_new_tokens must be an integer between 0 and {MAX_NEW_TOKENS}, got {max_new_tokens!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 100:
            raise InputError(f"temperature must be a number in [0, 100] (0 = greedy), got {temperature!r}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise InputError(f"top_k must be an integer ≥ 1 or null, got {top_k!r}")
        if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float))
                                  or not 0 < top_p <= 1):
            raise InputError(f"top_p must be in (0, 1] or null, got {top_p!r}")
        if stop is not None and (not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop)):
            raise InputError("stop must be a list of non-empty strings or null")
        return dict(max_new_tokens=max_new_tokens, temperature=float(temperature), top_k=top_k, top_p=top_p,
                    seed=None if seed is None else check_seed(seed), stop=stop)
