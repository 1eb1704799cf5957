"""Text generation for ``TransformerLM``: a pre-allocated KV cache, continuous batching, sampling, streaming.

The contract the HTTP server and the inference engine build on:

- ``DecodeBatch(model, *, slots, device="cpu")``: a KV cache of ``slots`` rows, allocated once.
  ``add(prompt_ids, *, max_new_tokens, temperature=1.0, top_k=None, top_p=None, seed=None, stop=None) -> slot``
  prefills the prompt (one forward over it) and makes the slot active; ``step()`` samples one token for every
  active, unfinished slot, then runs ONE batched single-token forward for them, and returns ``[(slot, token_id)]``;
  ``is_done(slot)``; ``remove(slot)`` frees the row; ``active`` lists the slots in use. Requests may join and
  leave between steps (continuous batching). Helpers: ``text(slot)`` (the continuation so far, cut at a stop
  string) and ``emit(slot)`` (the new text that is safe to stream: a possible stop-string prefix is held back).
- ``generate(model, prompts, **sampling) -> list[str]`` and ``stream(model, prompt, **sampling) -> Iterator[str]``
  return/yield the continuation only (never the prompt, never the stop string).

Sampling per slot: ``temperature`` (0 = greedy argmax), ``top_k`` (keep the k most likely), ``top_p`` (keep the
smallest set whose probability reaches p), ``seed`` (a slot's draws depend only on its own seed, not on the other
requests in the batch), ``stop`` strings, ``max_new_tokens``.

Context longer than ``block_size``: the cache holds at most ``block_size`` positions. When it is full, the slot is
re-prefilled with its last ``block_size - block_size // 4`` tokens (a sliding window, recomputed — learned
positions cannot be shifted in place), so the cost of long generations stays one token per step amortised.
An empty prompt starts from "\\n" (nanoGPT's start token) when the vocabulary has it.

Not thread-safe: drive one DecodeBatch from one thread.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

import torch
import torch.nn.functional as F

from genloom.errors import GenloomError
from genloom.models.kv_cache import KVCache

if TYPE_CHECKING:  # the model imports this module to generate: a type-only import keeps the two acyclic
    from genloom.models.transformer import TransformerLM


@dataclass
class _Slot:
    context: list[int]  # the tokens now in this row's cache window, in order (positions 0..len-1)
    pending: torch.Tensor  # (vocab,) logits for the next token
    max_new_tokens: int
    temperature: float
    top_k: int | None
    top_p: float | None
    rng: random.Random
    stop: list[str]
    generated: list[int] = field(default_factory=list)
    text: str = ""
    stop_at: int | None = None  # index in ``text`` where a stop string begins
    done: bool = False
    emitted: int = 0  # characters of ``text`` already handed out by emit()


def _check_sampling(*, max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None,
                    stop: list[str] | None) -> None:
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise GenloomError(f"max_new_tokens must be an integer ≥ 0, got {max_new_tokens!r}")
    if not temperature >= 0:
        raise GenloomError(f"temperature must be ≥ 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and top_k < 1:
        raise GenloomError(f"top_k must be ≥ 1 (or unset), got {top_k!r}")
    if top_p is not None and not 0 < top_p <= 1:
        raise GenloomError(f"top_p must be in (0, 1] (or unset), got {top_p!r}")
    if stop is not None and (not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop)):
        raise GenloomError("stop must be a list of non-empty strings")


def sample_rows(logits: torch.Tensor, *, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                u: torch.Tensor) -> torch.Tensor:
    """One token per row from logits (R, V): temperature (R,) (0 = argmax), top_k (R,) ints (V = off),
    top_p (R,) (1 = off), u (R,) uniform draws in [0, 1) → token ids (R,). Inverse-CDF sampling, so each row's
    token is a function of its own logits and its own u."""
    logits = logits.float()
    greedy = temperature <= 0
    if bool(greedy.all()):
        return logits.argmax(-1)  # the same tokens as the full path below gives greedy rows
    t = torch.where(greedy, torch.ones_like(temperature), temperature)
    z, order = (logits / t[:, None]).sort(dim=-1, descending=True)  # (R, V), most likely first
    probs = F.softmax(z, dim=-1)  # p_i ∝ exp(logit_i / T)
    ranks = torch.arange(logits.shape[-1], device=logits.device)[None]  # (1, V)
    keep = ranks < top_k[:, None]  # top-k: the k most likely
    keep &= (probs.cumsum(-1) - probs) < top_p[:, None]  # top-p: mass strictly before token i < p (keeps ≥ 1)
    cdf = (probs * keep).cumsum(-1)  # (R, V), unnormalised CDF of the kept tokens
    choice = (cdf < u[:, None] * cdf[:, -1:]).sum(-1).clamp_(max=logits.shape[-1] - 1)  # first i: cdf_i ≥ u·total
    tok = order.gather(1, choice[:, None])[:, 0]
    return torch.where(greedy, logits.argmax(-1), tok)


class DecodeBatch:
    """Continuous-batching decoder over a pre-allocated KV cache of ``slots`` rows (see the module docstring)."""

    def __init__(self, model: TransformerLM, *, slots: int, device: str | torch.device | None = None) -> None:
        if slots < 1:
            raise ValueError("slots must be ≥ 1")
        self.model = model.eval()
        self.config = model.config
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        dtype = next(model.parameters()).dtype
        self.cache = KVCache.empty(model.config, slots, device=self.device, dtype=dtype)
        self.slots = slots
        self.keep = self.config.block_size - max(1, self.config.block_size // 4)  # window after a slide
        self._slots: dict[int, _Slot] = {}
        self._vocab = model.config.vocab_size
        try:
            self._newline: int | None = model.vocab.index("\n")
        except ValueError:
            self._newline = None

    # -- the contract -----------------------------------------------------------------------------------------
    @property
    def active(self) -> list[int]:
        return sorted(self._slots)

    def add(self, prompt_ids: list[int], *, max_new_tokens: int, temperature: float = 1.0,
            top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
            stop: list[str] | None = None) -> int:
        """Prefill ``prompt_ids`` into a free row; returns its slot id."""
        _check_sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, stop=stop)
        free = [s for s in range(self.slots) if s not in self._slots]
        if not free:
            raise GenloomError(f"all {self.slots} slots are busy; remove a finished slot first")
        ids = list(prompt_ids)
        if not ids:
            if self._newline is None:
                raise GenloomError("empty prompt and the vocabulary has no newline to start from; give a prompt")
            ids = [self._newline]
        bad = [i for i in ids if not (isinstance(i, int) and 0 <= i < self._vocab)]
        if bad:
            raise GenloomError(f"prompt token id {bad[0]!r} is out of range 0..{self._vocab - 1}")
        if len(ids) > self.config.block_size:
            ids = ids[-self.keep:]  # the most recent context that fits, as after a slide
        slot = free[0]
        rng = random.Random(seed if seed is not None else int(torch.randint(2**62, ())))
        s = _Slot(context=ids, pending=self._prefill(slot, ids), max_new_tokens=max_new_tokens,
                  temperature=float(temperature), top_k=top_k, top_p=top_p, rng=rng, stop=list(stop or []))
        s.done = max_new_tokens == 0
        self._slots[slot] = s
        return slot

    def step(self) -> list[tuple[int, int]]:
        """Sample one token for every active unfinished slot; one batched forward for those that continue."""
        ready = [i for i in self.active if not self._slots[i].done]
        if not ready:
            return []
        out = self._sample(ready)
        go_on, slide = [], []
        for i, tok in zip(ready, out):
            s = self._slots[i]
            s.generated.append(tok)
            s.context.append(tok)
            self._append_text(s, self.model.decode([tok]))
            s.done = s.stop_at is not None or len(s.generated) >= s.max_new_tokens
            if not s.done:
                (slide if len(s.context) > self.config.block_size else go_on).append(i)
        if go_on:
            self._decode(go_on)
        for i in slide:  # after the batched decode: its dummy rows may have written into these rows
            s = self._slots[i]
            s.context = s.context[-self.keep:]
            s.pending = self._prefill(i, s.context)
        return list(zip(ready, out))

    def is_done(self, slot: int) -> bool:
        return self._get(slot).done

    def remove(self, slot: int) -> None:
        self._get(slot)
        del self._slots[slot]

    # -- helpers for callers ----------------------------------------------------------------------------------------
    def text(self, slot: int) -> str:
        """The continuation so far (cut before a stop string once one appeared)."""
        s = self._get(slot)
        return s.text if s.stop_at is None else s.text[:s.stop_at]

    def tokens(self, slot: int) -> list[int]:
        return list(self._get(slot).generated)

    def emit(self, slot: int) -> str:
        """New text since the last call that can be shown: while running, a tail that could begin a stop string
        is held back; once done, everything up to the stop string is flushed."""
        s = self._get(slot)
        end = len(self.text(slot))
        if not s.done and s.stop:
            for k in range(min(len(s.text), max(map(len, s.stop)) - 1), 0, -1):
                if any(stop.startswith(s.text[-k:]) for stop in s.stop):
                    end = len(s.text) - k  # the last k chars may be the start of a stop string
                    break
        new = s.text[s.emitted:end] if end > s.emitted else ""
        s.emitted = max(s.emitted, end)
        return new

    # -- internals ---------------------------------------------------------------------------------------------------
    def _get(self, slot: int) -> _Slot:
        try:
            return self._slots[slot]
        except KeyError:
            raise KeyError(f"slot {slot} is not active") from None

    def _append_text(self, s: _Slot, piece: str) -> None:
        before = len(s.text)
        s.text += piece
        if s.stop_at is None and s.stop:
            hits = [j for j in (s.text.find(st, max(0, before - len(st) + 1)) for st in s.stop) if j >= 0]
            if hits:
                s.stop_at = min(hits)

    @torch.no_grad()
    def _prefill(self, slot: int, ids: list[int]) -> torch.Tensor:
        idx = torch.tensor([ids], dtype=torch.long, device=self.device)  # (1, T)
        return self.model.forward_cached(idx, self.cache, slice(slot, slot + 1))[0]  # (vocab,)

    @torch.no_grad()
    def _decode(self, rows: list[int]) -> None:
        """One forward for the rows' newest tokens over the contiguous row span lo..hi (a view of the cache);
        rows in the span that are not decoding get a dummy token at position 0, their outputs are discarded."""
        lo, hi = rows[0], rows[-1] + 1
        toks = torch.zeros(hi - lo, 1, dtype=torch.long)  # (R, 1)
        pos = torch.zeros(hi - lo, dtype=torch.long)  # (R,)
        for i in rows:
            s = self._slots[i]
            toks[i - lo, 0] = s.context[-1]
            pos[i - lo] = len(s.context) - 1
        logits = self.model.forward_cached(toks.to(self.device), self.cache, slice(lo, hi), pos.to(self.device))
        for i in rows:
            self._slots[i].pending = logits[i - lo]

    def _sample(self, ready: list[int]) -> list[int]:
        ss = [self._slots[i] for i in ready]
        logits = torch.stack([s.pending for s in ss])  # (R, V)
        V = logits.shape[-1]
        dev = logits.device
        tok = sample_rows(
            logits,
            temperature=torch.tensor([s.temperature for s in ss], device=dev),
            top_k=torch.tensor([s.top_k if s.top_k is not None else V for s in ss], device=dev),
            top_p=torch.tensor([s.top_p if s.top_p is not None else 1.0 for s in ss], device=dev),
            u=torch.tensor([s.rng.random() for s in ss], dtype=torch.float32, device=dev),
        )
        return tok.tolist()


def _prepare(model: TransformerLM, prompts: list[str]) -> list[list[int]]:
    if isinstance(prompts, str):
        raise GenloomError("generate() takes a list of prompts; use [prompt] for one")
    return [model.encode(p, what="prompt") for p in prompts]


def generate(model: TransformerLM, prompts: list[str], *, max_new_tokens: int = 200, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             stop: list[str] | None = None, slots: int | None = None, device: str | torch.device | None = None
             ) -> list[str]:
    """Continuations of ``prompts`` (of any lengths), decoded together. Prompt i uses seed ``seed + i``.
    At most ``slots`` (default: all prompts, up to 64) decode at once; the rest join as rows free up."""
    ids = _prepare(model, prompts)
    if not ids:
        return []
    batch = DecodeBatch(model, slots=slots or min(len(ids), 64), device=device)
    results: list[str] = [""] * len(ids)
    owner: dict[int, int] = {}
    nxt = 0
    while nxt < len(ids) or owner:
        while nxt < len(ids) and len(owner) < batch.slots:
            owner[batch.add(ids[nxt], max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                            top_p=top_p, seed=None if seed is None else seed + nxt, stop=stop)] = nxt
            nxt += 1
        batch.step()
        for slot in [s for s in owner if batch.is_done(s)]:
            results[owner.pop(slot)] = batch.text(slot)
            batch.remove(slot)
    return results


def stream(model: TransformerLM, prompt: str, *, max_new_tokens: int = 200, temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
           stop: list[str] | None = None, device: str | torch.device | None = None) -> Iterator[str]:
    """Yield the continuation piece by piece as tokens are produced (a held-back stop-string prefix comes out
    once it turns out not to be one); the pieces join to ``generate(model, [prompt], ...)[0]``."""
    (ids,) = _prepare(model, [prompt])
    batch = DecodeBatch(model, slots=1, device=device)
    slot = batch.add(ids, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                     seed=seed, stop=stop)
    while True:
        batch.step()
        piece = batch.emit(slot)
        if piece:
            yield piece
        if batch.is_done(slot):
            return


@torch.no_grad()
def generate_uncached(model: TransformerLM, prompt_ids: list[int], *, max_new_tokens: int,
                      window: str = "crop") -> list[int]:
    """Greedy decoding that recomputes the whole context every step (the reference and the benchmark baseline).
    ``window="crop"``: the last block_size tokens each step (nanoGPT); ``"slide"``: the same window rule as
    DecodeBatch, so that the two agree token for token beyond block_size too."""
    T = model.config.block_size
    keep = T - max(1, T // 4)
    ctx = list(prompt_ids)[-keep:] if len(prompt_ids) > T else list(prompt_ids)
    out = []
    for _ in range(max_new_tokens):
        idx = torch.tensor([ctx[-T:]], dtype=torch.long)  # (1, ≤T)
        tok = int(model(idx)[0, -1].argmax())
        out.append(tok)
        ctx.append(tok)
        if window == "slide" and len(ctx) > T:
            ctx = ctx[-keep:]
    return out
