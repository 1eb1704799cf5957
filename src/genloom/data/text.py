"""Text corpora for the character-level LM: loading, the char tokenizer, and batch sources.

- ``CharTokenizer``: the sorted set of characters of the training corpus (nanoGPT's shakespeare_char
  convention); stored in the export as ``genloom.vocab`` (JSON list of characters).
- ``split_tokens``: first 90% train, last 10% validation, as nanoGPT does.
- ``WindowBatches``: random contiguous windows (training); all offsets of an epoch are drawn up front from the
  generator, so resuming with ``start=k`` replays exactly the same batches.
- ``SequentialWindows``: non-overlapping windows that cover a token tensor exactly once (validation and
  ``genloom eval --text``): every token but the first is predicted once.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterator

import torch

from genloom.data.batches import Sharding
from genloom.errors import DataError, GenloomError

# The default corpus ships inside the package (1.1 MB), so `genloom train lm` works from any directory and from a
# non-editable install. Resolution: ``--data FILE`` → ``$GENLOOM_DATA/tinyshakespeare.txt`` (the same variable
# the image datasets use) → the shipped copy, whose SHA-256 is checked before use.
CORPUS_NAME = "tinyshakespeare.txt"
CORPUS_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
SHIPPED_PREFIX = "genloom:"  # how a model file's provenance names the shipped corpus (no install path in it)
SHIPPED_CORPUS = Path(__file__).resolve().parent.parent / "assets" / CORPUS_NAME


def shipped_corpus() -> Path:
    """The Tiny Shakespeare copy inside the package, verified against its SHA-256."""
    try:
        raw = SHIPPED_CORPUS.read_bytes()
    except FileNotFoundError:
        raise DataError(f"the shipped {CORPUS_NAME} is missing from this genloom install ({SHIPPED_CORPUS}); "
                        f"reinstall genloom or pass --data FILE") from None
    if hashlib.sha256(raw).hexdigest() != CORPUS_SHA256:
        raise DataError(f"{SHIPPED_CORPUS}: SHA-256 mismatch (a damaged install); reinstall genloom or pass "
                        f"--data FILE")
    return SHIPPED_CORPUS


def default_corpus() -> Path:
    """``$GENLOOM_DATA/tinyshakespeare.txt`` when that file exists, else the shipped copy."""
    env = os.environ.get("GENLOOM_DATA")
    if env and (Path(env) / CORPUS_NAME).is_file():
        return Path(env) / CORPUS_NAME
    return shipped_corpus()


def corpus_ref(path: Path) -> str:
    """What a model file's provenance records as its corpus: ``genloom:tinyshakespeare.txt`` for the shipped
    copy (portable across installs), else the path as given."""
    try:
        if Path(path).resolve() == SHIPPED_CORPUS:
            return SHIPPED_PREFIX + CORPUS_NAME
    except OSError:
        pass
    return str(path)


def resolve_corpus_ref(ref: str) -> Path | None:
    """The file a provenance ``data`` entry names, or None when it is not available here."""
    if ref == SHIPPED_PREFIX + CORPUS_NAME:
        return shipped_corpus()
    return Path(ref) if Path(ref).is_file() else None


def load_text(path: str | Path) -> str:
    """Read a UTF-8 text file, with errors that name the fix."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{p}: no such text file; pass a UTF-8 file with --data") from None
    except IsADirectoryError:
        raise DataError(f"{p}: is a directory; pass a UTF-8 text file") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: not UTF-8 text (byte {e.start}: {e.reason}); convert it, e.g. "
                        f"`iconv -t utf-8`") from None
    if not text:
        raise DataError(f"{p}: the file is empty")
    return text


class CharTokenizer:
    """Characters <-> ids. ``encode`` raises a ``GenloomError`` naming the first unknown character."""

    def __init__(self, chars: list[str]) -> None:
        if not chars:
            raise ValueError("a vocabulary needs at least one character")
        if any(len(c) != 1 for c in chars) or len(set(chars)) != len(chars):
            raise ValueError("the vocabulary must be a list of distinct single characters")
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    @classmethod
    def from_json(cls, s: str) -> "CharTokenizer":
        try:
            chars = json.loads(s)
        except json.JSONDecodeError:
            raise ValueError("genloom.vocab is not a JSON list of characters") from None
        if not isinstance(chars, list) or not all(isinstance(c, str) for c in chars):
            raise ValueError("genloom.vocab is not a JSON list of characters")
        return cls(chars)

    def to_json(self) -> str:
        return json.dumps(self.chars, ensure_ascii=False)

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str, *, what: str = "text") -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            c = e.args[0]
            i = text.index(c)
            line = text.count("\n", 0, i) + 1
            raise GenloomError(f"{what} contains the character {c!r} (U+{ord(c):04X}, line {line}) which is not in "
                               f"this model's vocabulary of {len(self)} characters; remove or replace it") from None

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        try:
            return "".join(self.chars[i] for i in ids)
        except IndexError:
            raise ValueError(f"token id out of range 0..{len(self) - 1}") from None


def split_tokens(tokens: torch.Tensor, *, val_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """First (1 - val_fraction) for training, the rest for validation (nanoGPT: int(n * 0.9))."""
    n = int(len(tokens) * (1 - val_fraction))
    return tokens[:n], tokens[n:]


class WindowBatches(Sharding):
    """(x, y) batches of random contiguous windows: x = tokens[o:o+T], y = tokens[o+1:o+T+1], each (B, T) int64.

    One "epoch" is ``steps`` batches (e.g. the validation interval); its B·steps offsets are drawn up front.
    """

    def __init__(self, tokens: torch.Tensor, *, batch_size: int, block_size: int, steps: int) -> None:
        if len(tokens) < block_size + 1:
            raise DataError(f"the text has {len(tokens)} tokens, fewer than block_size + 1 = {block_size + 1}; "
                            f"use a longer text or a smaller --block-size")
        if batch_size < 1 or steps < 1:
            raise ValueError("batch_size and steps must be ≥ 1")
        self.tokens = tokens.long()
        self.batch_size, self.block_size, self.steps = batch_size, block_size, steps
        self._ar = torch.arange(block_size + 1)

    def __len__(self) -> int:
        return self.steps

    def epoch(self, generator: torch.Generator | None = None, start: int = 0) -> Iterator[tuple[torch.Tensor,
                                                                                               torch.Tensor]]:
        hi = len(self.tokens) - self.block_size  # offsets 0 .. N-T-1, so that y's last index is ≤ N-1
        offsets = torch.randint(hi, (self.steps, self.batch_size), generator=generator)  # (steps, B)
        for b in range(start, self.steps):
            o = self._take(offsets[b])  # this rank's windows of the global batch
            if o is None:
                continue
            w = self.tokens[o.to(self.device)[:, None] + self._ar]  # (B, T+1)
            yield w[:, :-1], w[:, 1:]

    def to(self, device: torch.device | str) -> "WindowBatches":
        self.device = torch.device(device)
        self.tokens, self._ar = self.tokens.to(self.device), self._ar.to(self.device)
        return self


class SequentialWindows(Sharding):
    """Non-overlapping windows covering ``tokens`` exactly once, in order; the last batch may be smaller and
    the last window shorter. Every token but the first is a target exactly once."""

    def __init__(self, tokens: torch.Tensor, *, block_size: int, batch_size: int = 64) -> None:
        if len(tokens) < 2:
            raise DataError("the text needs at least 2 characters to score next-character predictions")
        self.tokens = tokens.long()
        self.block_size, self.batch_size = block_size, batch_size
        n_pred = len(self.tokens) - 1
        self.full = n_pred // block_size  # complete windows
        self.tail = n_pred - self.full * block_size  # predictions in the last, shorter window

    def __len__(self) -> int:
        return -(-self.full // self.batch_size) + (1 if self.tail else 0)

    def epoch(self, generator: torch.Generator | None = None, start: int = 0) -> Iterator[tuple[torch.Tensor,
                                                                                               torch.Tensor]]:
        T = self.block_size
        body = self.tokens[:self.full * T + 1]
        x_all = body[:-1].view(self.full, T)  # (W, T)
        y_all = body[1:].view(self.full, T)  # (W, T)
        n_body = -(-self.full // self.batch_size)
        for b in range(start, len(self)):
            if b < n_body:
                rows = self._take(torch.arange(b * self.batch_size, min((b + 1) * self.batch_size, self.full)))
                if rows is None:
                    continue
                sl = slice(int(rows[0]), int(rows[-1]) + 1) if len(rows) else slice(0, 0)  # contiguous rows
                yield x_all[sl], y_all[sl]
            else:
                rows = self._take(torch.arange(1))
                if rows is None:
                    continue
                o = self.full * T
                k = self.tail if len(rows) else 0  # the last, shorter window: one rank's
                yield self.tokens[o:o + k][None], self.tokens[o + 1:o + k + 1][None]  # (1, tail)

    def to(self, device: torch.device | str) -> "SequentialWindows":
        self.device = torch.device(device)
        self.tokens = self.tokens.to(self.device)
        return self
