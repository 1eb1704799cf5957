"""The LM engine: a thin, validated wrapper over ``models/lm_generate.py`` (KV-cache decoding, continuous
batching). ``generate`` decodes a list of prompts together; ``stream`` yields one prompt's text as it comes.

The HTTP worker drives ``DecodeBatch`` itself (requests join and leave between steps) through ``engine.model``.
"""
from __future__ import annotations

from typing import Any, ClassVar, Iterator

import torch
from torch import nn

from genloom.engine.base import Engine, InputError, check_request, check_seed
from genloom.export import ModelFile

MAX_PROMPTS = 256


class LMEngine(Engine):
    kind: ClassVar[str] = "lm"
    max_batch: int = 64  # decode slots: one batched single-token forward per step

    def __init__(self, model: nn.Module, header: ModelFile) -> None:
        self.model = model.eval()
        self.header = header
        self.backend = "eager"
        self.vocab: list[str] = list(model.vocab)
        self.block_size = int(model.config.block_size)

    def generate(self, prompts: list[str], *, max_new_tokens: int = 200, temperature: float = 0.8,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 stop: list[str] | None = None, **unknown: Any) -> list[str]:
        """Continuations (never the prompt, never the stop string); prompt i samples with seed ``seed + i``.
        Options and limits as in ``core.requests`` (``stop``: a string or a list of strings)."""
        from genloom.models.lm_generate import generate

        kw = self._check(prompts, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                         top_p=top_p, seed=seed, stop=stop, unknown=unknown)
        with torch.inference_mode():
            return generate(self.model, list(prompts), slots=min(len(prompts), self.max_batch), **kw)

    def stream(self, prompt: str, *, max_new_tokens: int = 200, temperature: float = 0.8, top_k: int | None = None,
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

    def _check(self, prompts: Any, *, unknown: dict[str, Any], **options: Any) -> dict[str, Any]:
        """The prompts and options through the one request schema (``core.requests``): the same limits and error
        text as the CLI, HTTP and AMQP."""
        if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
            raise InputError("prompts", "must be a list of strings; use [prompt] for one")
        if not 1 <= len(prompts) <= MAX_PROMPTS:
            raise InputError("prompts", f"must hold between 1 and {MAX_PROMPTS} strings, got {len(prompts)}")
        p: dict[str, Any] = {}
        for prompt in prompts:
            p = check_request(self, "generate", prompt=prompt, **options, **unknown)
        del p["prompt"]
        if p["seed"] is not None:
            p["seed"] = check_seed(p["seed"])
        p["temperature"] = float(p["temperature"])
        return p
