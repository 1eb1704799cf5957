"""``run_batch(engine, requests)``: a batch of validated requests (``core.requests``) for one model, run together
and split back — the one inference loop under the HTTP worker processes, the AMQP worker, the CLI and tests.

Images (``sample``): each request's latent codes are drawn exactly as ``engine.sample(n, seed=...)`` draws them
(numpy PCG64 noise per seed, ``engine.base.noise``): a seed is one picture on every transport.

- An exact backend (``EXACT_BACKENDS``: fp32 eager, numpy) decodes each request on its own: BLAS blocks a
  matmul differently for another number of rows (|Δ| ≈ 1e-7), so only the request's own shape is
  bit-identical to ``engine.sample``, whatever batch the request was grouped into.
- A fast backend (bf16, int8, compile, onnx) decodes the whole batch in one forward pass: the same 8-bit
  picture within its documented tolerance, at the speed of batching.

Seedless requests share one draw from ``rng``. ``reconstruct`` / ``interpolate`` / ``trajectory`` run one call per
request; flow ``sample`` requests too (an ODE solve each, with their own ``steps`` / ``guidance``).
LM (``generate``): one ``engine.generate`` call per group of requests with equal settings; a seeded request is a
group of its own (``generate`` gives prompt i of a call the seed ``seed + i``), so its text is the same alone
or batched.

The result of each request is a float32 (n, 28, 28) array in [0, 1] or a text; a request that fails on its own
(bad input the engine refused) gets its exception in its place, a failure of the whole batch raises.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from genloom.core.requests import FLOW_ONLY

EXACT_BACKENDS = frozenset({"exact", "eager", "numpy"})
_GEN_KEYS = ("max_new_tokens", "temperature", "top_k", "top_p", "seed", "stop")


def run_batch(engine: Any, requests: Sequence[Mapping[str, Any]], *,
              rng: np.random.Generator | None = None) -> list[Any]:
    """Results of ``requests`` (each ``{"op": ..., **params}``, validated) in order; see the module docstring."""
    out: list[Any] = [None] * len(requests)
    by_op: dict[str, list[int]] = {}
    for i, r in enumerate(requests):
        by_op.setdefault(r["op"], []).append(i)
    for op, idx in by_op.items():
        if op == "sample":
            _samples(engine, [requests[i] for i in idx], rng, out, idx)
        elif op == "generate":
            _generate(engine, [requests[i] for i in idx], out, idx)
        else:
            for i in idx:
                out[i] = _one(engine, requests[i])
    return out


def _one(engine: Any, r: Mapping[str, Any]) -> Any:
    try:
        if r["op"] == "reconstruct":
            return engine.reconstruct(r["images"], labels=r.get("labels"))
        if r["op"] == "interpolate":
            return engine.interpolate(r["a"], r["b"], steps=r["steps"], label=r.get("label"))
        if r["op"] == "trajectory":  # flow: rows of denoising states and predictions (engine/flow.py)
            return engine.trajectory_grid(r["n"], seed=r.get("seed"), labels=r.get("labels"), steps=r.get("steps"),
                                          guidance=r.get("guidance"), sampler=r.get("sampler"))
        raise ValueError(f"unknown op {r['op']!r}")
    except Exception as e:  # a bad item fails alone; the rest of the batch is served
        return e


def _samples(engine: Any, reqs: list[Mapping[str, Any]], rng: np.random.Generator | None, out: list[Any],
             idx: list[int]) -> None:
    from genloom.engine.base import check_labels, check_seed, noise

    latent = getattr(engine, "latent", None)
    if latent is None or not hasattr(engine, "decode"):  # no batched decode (flow: an ODE): one call per request
        for i, r in zip(idx, reqs):
            flow = {k: r[k] for k in FLOW_ONLY if r.get(k) is not None}  # flow models only
            out[i] = engine.sample(r["n"], seed=r["seed"], labels=r["labels"], **flow)
        return
    num_classes = int(getattr(engine, "num_classes", 0) or 0)
    sizes = [int(r["n"]) for r in reqs]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    z = np.empty((offsets[-1], latent), np.float32)  # (Σn, latent)
    seedless = [k for k, r in enumerate(reqs) if r["seed"] is None]
    if seedless:  # one draw for all seedless requests
        total = sum(sizes[k] for k in seedless)
        shared = (rng.standard_normal((total, latent), dtype=np.float32) if rng is not None
                  else noise(check_seed(None), total, latent))
        at = 0
        for k in seedless:
            z[offsets[k]:offsets[k + 1]] = shared[at:at + sizes[k]]
            at += sizes[k]
    for k, r in enumerate(reqs):
        if r["seed"] is not None:  # z ~ N(0, I) from the request's own seed, as engine.sample draws it
            z[offsets[k]:offsets[k + 1]] = noise(check_seed(r["seed"]), sizes[k], latent)
    ys = [check_labels(r["labels"], n, num_classes) for r, n in zip(reqs, sizes)]
    if getattr(engine, "backend", None) in EXACT_BACKENDS:  # bit-identical to engine.sample: its own shape
        for k, i in enumerate(idx):
            out[i] = engine.decode(z[offsets[k]:offsets[k + 1]], labels=ys[k])
        return
    labels = None if not num_classes else np.concatenate(ys)  # (Σn,)
    images = engine.decode(z, labels=labels)  # (Σn, 28, 28): one forward pass for the whole batch
    for k, i in enumerate(idx):
        out[i] = images[offsets[k]:offsets[k + 1]]


def _generate(engine: Any, reqs: list[Mapping[str, Any]], out: list[Any], idx: list[int]) -> None:
    groups: dict[Any, list[int]] = {}
    for k, r in enumerate(reqs):
        key = tuple((name, tuple(v) if isinstance(v, list) else v) for name, v in
                    ((name, r.get(name)) for name in _GEN_KEYS))
        groups.setdefault(key if r.get("seed") is None else (*key, ("#", k)), []).append(k)
    for key, ks in groups.items():
        opts = {name: (list(v) if isinstance(v, tuple) else v) for name, v in key if name != "#"}
        texts = engine.generate([reqs[k]["prompt"] for k in ks], **opts)
        if len(texts) != len(ks):
            raise RuntimeError(f"engine returned {len(texts)} texts for {len(ks)} prompts")
        for k, text in zip(ks, texts):
            out[idx[k]] = text
