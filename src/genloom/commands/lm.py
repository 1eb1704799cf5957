"""`genloom sample` / `genloom eval` for character LMs (kind "lm")."""
from __future__ import annotations

import argparse
import sys
from typing import Any

import torch

from genloom import export
from genloom.errors import GenloomError
from genloom.export import ModelFile

MAX_NEW_TOKENS = 100_000


def _sampling(args: argparse.Namespace) -> dict[str, Any]:
    if not 0 <= args.max_new_tokens <= MAX_NEW_TOKENS:
        raise GenloomError(f"--max-new-tokens must be between 0 and {MAX_NEW_TOKENS}, got {args.max_new_tokens}")
    if args.temperature < 0:
        raise GenloomError(f"--temperature must be ≥ 0 (0 = greedy), got {args.temperature}")
    if args.top_k is not None and args.top_k < 1:
        raise GenloomError(f"--top-k must be ≥ 1, got {args.top_k}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise GenloomError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.stop is not None and not all(args.stop):
        raise GenloomError("--stop strings must not be empty")
    return {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_k": args.top_k,
            "top_p": args.top_p, "seed": args.seed, "stop": args.stop}


def sample(args: argparse.Namespace, header: ModelFile) -> int:
    """Print the prompt and its continuation (one sample; ``-n`` applies to image models).
    ``--stream`` prints characters as they are generated; ``-o FILE.txt`` also writes the text there."""
    from genloom.models.lm_generate import generate, stream

    kw = _sampling(args)
    prompt = args.prompt if args.prompt is not None else ""
    if args.out is not None and args.out.suffix != ".txt":
        raise GenloomError(f"-o {args.out}: an LM writes text; use a .txt file name (or omit -o)")
    model = export.load(header.path)
    model.encode(prompt)  # the error names a character outside the vocabulary, before any output
    with torch.no_grad():  # scoped: `genloom sample` may run in-process (quickstart, tests)
        if args.stream:
            sys.stdout.write(prompt)
            parts = []
            for piece in stream(model, prompt, **kw):
                parts.append(piece)
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
            text = prompt + "".join(parts)
        else:
            text = prompt + generate(model, [prompt], **kw)[0]
            print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    return 0


def _eval_text(args: argparse.Namespace, header: ModelFile) -> tuple[str, bool]:
    """The text to score: --text FILE (whole file), else the validation split of the training corpus."""
    from genloom.data.text import load_text, resolve_corpus_ref

    if args.text is not None:
        return load_text(args.text), False
    data = header.provenance.get("data")
    found = resolve_corpus_ref(data) if data else None
    if found is not None:
        return load_text(found), True
    raise GenloomError("give --text FILE (a UTF-8 text to score); the training corpus named in the model file "
                       f"({data or 'none'}) is not available here")


def evaluate(args: argparse.Namespace, header: ModelFile) -> dict[str, Any]:
    from genloom.data.text import split_tokens
    from genloom.eval.lm import evaluate_lm

    text, is_corpus = _eval_text(args, header)
    model = export.load(header.path)
    tokens = torch.tensor(model.encode(text, what=str(args.text or "the corpus")), dtype=torch.long)
    if is_corpus:
        tokens = split_tokens(tokens)[1]  # the validation split the model was selected on
    res = evaluate_lm(model, tokens, batch_size=max(1, 8192 // model.config.block_size))
    return {**res, "text": str(args.text) if args.text is not None else "validation split",
            "block_size": model.config.block_size}
