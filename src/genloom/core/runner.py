"""Run a batch of validated requests for one model in one forward pass, and split the results back.

VAE: each request's latent codes are drawn exactly as ``Engine.sample(n, seed=...)`` draws them (numpy PCG64
noise per seed), concatenated into one (Σn, latent) matrix, decoded by one ``engine.decode`` call and split —
so a seeded request gives the same images as ``genloom sample`` or the HTTP server, batched or not (up to
float32 rounding: BLAS sums in a different order for another batch size, |Δ| ≤ 1e-6). Seedless
requests share one noise draw. Other image engines run one ``sample`` per request; the LM runs one ``generate``
call per group of requests with equal sampling settings.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from genloom.queue.messages import InvalidRequest, Request, encode_images


class ModelRunner:
    """One loaded model. ``check`` validates model-specific params; ``run`` executes a batch."""

    def __init__(self, name: str, path: str | Path, *, threads: int | None = 1) -> None:
        from genloom import engine

        self.name = name
        self.path = Path(path)
        self.engine = engine.load(path, threads=threads)
        self.kind: str = self.engine.kind
        self.num_classes = int(getattr(self.engine, "num_classes", 0) or 0)

    def check(self, req: Request) -> None:
        """Raise InvalidRequest for params that this model can never accept (never retried)."""
        if req.op == "generate":
            vocab = set(getattr(self.engine, "vocab", ()))
            bad = next((ch for ch in req.params["prompt"] if vocab and ch not in vocab), None)
            if bad is not None:
                raise InvalidRequest(f"params.prompt: character {bad!r} is not in the model's vocabulary",
                                     request_id=req.id)
        if req.op == "sample":
            from genloom.engine.base import InputError, check_labels

            try:
                check_labels(req.params["labels"], req.params["n"], self.num_classes)
            except InputError as e:
                raise InvalidRequest(f"params.labels: {e}", request_id=req.id) from None

    def run(self, reqs: list[Request]) -> list[Any]:
        """The JSON result of each request, in order. Raises on a (transient) failure of the whole batch."""
        if self.kind == "lm":
            return self._generate(reqs)
        if hasattr(self.engine, "decode") and hasattr(self.engine, "latent"):
            images = self._sample_batched(reqs)
        else:
            images = [self.engine.sample(r.params["n"], seed=r.params["seed"], labels=r.params["labels"])
                      for r in reqs]
        return [encode_images(img, r.params["format"]) for img, r in zip(images, reqs)]

    def _sample_batched(self, reqs: list[Request]) -> list[np.ndarray]:
        from genloom.engine.base import check_labels, check_seed, noise

        latent = int(self.engine.latent)
        sizes = [int(r.params["n"]) for r in reqs]
        z = np.empty((sum(sizes), latent), np.float32)  # (Σn, latent)
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        seedless = [i for i, r in enumerate(reqs) if r.params["seed"] is None]
        if seedless:  # one draw for all seedless requests
            shared = noise(check_seed(None), sum(sizes[i] for i in seedless), latent)
            k = 0
            for i in seedless:
                z[offsets[i]:offsets[i + 1]] = shared[k:k + sizes[i]]
                k += sizes[i]
        for i, r in enumerate(reqs):
            if r.params["seed"] is not None:
                z[offsets[i]:offsets[i + 1]] = noise(r.params["seed"], sizes[i], latent)
        labels = None
        if self.num_classes:
            labels = np.concatenate([check_labels(r.params["labels"], n, self.num_classes)
                                     for r, n in zip(reqs, sizes)])  # (Σn,)
        out = self.engine.decode(z, labels=labels)  # (Σn, 28, 28)
        return [out[offsets[i]:offsets[i + 1]] for i in range(len(reqs))]

    def _generate(self, reqs: list[Request]) -> list[Any]:
        # one generate() call per group of equal settings; the engine gives prompt i of a call seed + i, so a
        # seeded request is a group of its own (same text as the same request sent alone)
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, r in enumerate(reqs):
            key = tuple(sorted((k, v) for k, v in r.params.items() if k != "prompt"))
            groups.setdefault(key if r.params["seed"] is None else (*key, ("#", i)), []).append(i)
        results: list[Any] = [None] * len(reqs)
        for key, idx in groups.items():
            texts = self.engine.generate([reqs[i].params["prompt"] for i in idx],
                                         **{k: v for k, v in key if k != "#"})
            if isinstance(texts, str):
                texts = [texts]
            if len(texts) != len(idx):
                raise RuntimeError(f"engine returned {len(texts)} texts for {len(idx)} prompts")
            for i, text in zip(idx, texts):
                results[i] = {"text": text}
        return results
