"""What every engine shares, torch-free: input validation, seeded noise, and the ``Engine`` base class.

This module imports only numpy, so the torch-free path (``lite.py``) and the torch engines validate inputs the
same way and draw the same noise for a given seed (numpy PCG64, not torch's generator): a seed gives the same
images on every backend.
"""
from __future__ import annotations

from typing import Any, ClassVar, Iterator, Protocol, Sequence

import numpy as np

from genloom.core import requests
from genloom.core.requests import ModelInfo, RequestError
from genloom.fileformat import ModelFile

MAX_N = 65_536  # rows per decode/encode call (a server's batch); 65,536 × 784 float32 = 205 MB of output
IMAGE_HW = (28, 28)
BACKENDS = ("auto", "exact", "eager", "compile", "mixed", "bf16", "int8", "onnx", "numpy")  # exact = fp32 eager
InputError = RequestError  # bad input to an engine call: ``"<field>: <message>"``, the same text on every transport


def info_of(engine: Any) -> ModelInfo:
    """Kind, classes and vocabulary of an engine's model file (what request validation checks against)."""
    info = engine.__dict__.get("_info")
    if info is None:
        info = engine.__dict__["_info"] = ModelInfo.of_header(engine.header)
    return info


def check_request(engine: Any, op: str, **params: Any) -> dict[str, Any]:
    """A Python call's arguments through the one request schema (``core.requests``): the same limits and the
    same error text as the CLI, HTTP and AMQP."""
    return requests.check(op, params, model=info_of(engine))


def sample_inputs(engine: Any, n: Any, seed: Any, labels: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """``sample(n, seed=, labels=)`` of any image engine: validated, then z ~ N(0, I) from the seed (numpy
    PCG64, ``noise``) and the (n,) labels (None for an unconditional model) — the one noise source."""
    p = check_request(engine, "sample", n=n, seed=seed, labels=labels)
    return prior_inputs(engine, p["n"], p["seed"], p["labels"])


def prior_inputs(engine: Any, n: int, seed: Any, labels: Any = None) -> tuple[np.ndarray, np.ndarray | None]:
    """z ~ N(0, I) (n, latent) from the seed and the (n,) labels (a conditional model without labels cycles the
    classes), without a request's limit on n: what ``sample`` decodes, for callers that decode in chunks."""
    return noise(check_seed(seed), n, int(engine.latent)), check_labels(labels, n, engine.num_classes)


def check_n(n: Any, *, field: str = "n", max_n: int = MAX_N) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise InputError(field, f"must be an integer, got {type(n).__name__}")
    if not 1 <= int(n) <= max_n:
        raise InputError(field, f"must be between 1 and {max_n}, got {n}")
    return int(n)


def check_seed(seed: Any) -> int:
    """None → a fresh random seed; otherwise a non-negative integer below 2**63."""
    if seed is None:
        return int(np.random.SeedSequence().generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InputError("seed", f"must be an integer or null, got {type(seed).__name__}")
    if not 0 <= int(seed) < 2**63:
        raise InputError("seed", f"must be between 0 and 2**63 - 1, got {seed}")
    return int(seed)


def check_labels(labels: Sequence[int] | None, n: int, num_classes: int) -> np.ndarray | None:
    """(n,) int64 class labels for a conditional model; None for an unconditional one.

    A conditional model given no labels cycles through the classes (0, 1, …, C-1, 0, …), like ``generate``.
    """
    if not num_classes:
        if labels is not None:
            raise InputError("labels", "given but this model is not conditional; pass null")
        return None
    if labels is None:
        return np.arange(n, dtype=np.int64) % num_classes
    try:
        arr = np.asarray(labels)
    except Exception:
        raise InputError("labels", "must be an integer or a non-empty list of integers") from None
    if arr.ndim > 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise InputError("labels", "must be an integer or a non-empty list of integers")
    return np.asarray(requests.check_labels(arr.tolist(), n, num_classes), dtype=np.int64)


def check_images(x: Any, *, field: str = "x", x_dim: int = 784, max_n: int = MAX_N) -> np.ndarray:
    """Images (n, 28, 28), (n, 1, 28, 28) or (n, 784), float in [0, 1] → float32 (n, 784)."""
    try:
        arr = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError):
        raise InputError(field, "must be a float array of images in [0, 1]") from None
    if arr.ndim < 2 or int(np.prod(arr.shape[1:])) != x_dim:
        raise InputError(field, f"must have shape (n, 28, 28) or (n, {x_dim}), got {arr.shape}")
    check_n(len(arr), field=f"len({field})", max_n=max_n)
    flat = arr.reshape(len(arr), x_dim)  # (n, 784)
    if not np.isfinite(flat).all() or flat.min() < 0.0 or flat.max() > 1.0:
        raise InputError(field, "values must be finite and in [0, 1]; scale 8-bit images by 1/255")
    return flat


def check_latent(z: Any, latent: int, *, field: str = "z", max_n: int = MAX_N) -> np.ndarray:
    """Latent codes (n, latent) or (latent,) → float32 (n, latent)."""
    try:
        arr = np.asarray(z, dtype=np.float32)
    except (TypeError, ValueError):
        raise InputError(field, f"must be a float array of shape (n, {latent})") from None
    if arr.ndim == 1:
        arr = arr[None]  # (1, latent)
    if arr.ndim != 2 or arr.shape[1] != latent:
        raise InputError(field, f"must have shape (n, {latent}), got {np.shape(z)}")
    check_n(len(arr), field=f"len({field})", max_n=max_n)
    if not np.isfinite(arr).all():
        raise InputError(field, "values must be finite")
    return arr


def check_steps(steps: Any) -> int:
    return check_n(steps, field="steps", max_n=requests.DEFAULT_LIMITS.max_steps)


def noise(seed: int, n: int, dim: int) -> np.ndarray:
    """Standard normal (n, dim) float32 from numpy's PCG64: the same on every backend for a given seed."""
    return np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)


def onehot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.eye(num_classes, dtype=np.float32)[labels]  # (n, C)


def slerp(a: np.ndarray, b: np.ndarray, steps: int) -> np.ndarray:
    """Spherical interpolation between latent codes a, b (latent,) → (steps, latent).

    slerp(t) = sin((1-t)Ω)/sin Ω · a + sin(tΩ)/sin Ω · b,  cos Ω = a·b / (|a||b|); linear when a ∥ b.
    Gaussian latents concentrate near a sphere, so slerp stays in the typical set where lerp would not.
    """
    t = np.linspace(0.0, 1.0, steps, dtype=np.float64)[:, None]  # (steps, 1)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    cos = float(a64 @ b64 / max(np.linalg.norm(a64) * np.linalg.norm(b64), 1e-12))
    omega = np.arccos(np.clip(cos, -1.0, 1.0))
    if np.sin(omega) < 1e-6:
        out = (1 - t) * a64 + t * b64
    else:
        out = (np.sin((1 - t) * omega) * a64 + np.sin(t * omega) * b64) / np.sin(omega)
    return out.astype(np.float32)


class Engine(Protocol):
    """What ``genloom.engine.load`` returns, for every kind and backend. Image engines (``vae``, ``gan``) implement
    ``sample`` and ``decode`` (the VAE also ``encode``, ``reconstruct``, ``interpolate``); the LM engine implements
    ``generate`` and ``stream``. A call a kind does not have raises :class:`InputError` naming the kind.

    Thread-safety: an engine may be called from one thread at a time. Calls are pure functions of their
    inputs (no state changes), but the thread count is process-wide (torch/onnxruntime intra-op pools), so the
    server runs one engine per worker process and serialises calls to it.
    """

    kind: ClassVar[str]
    header: ModelFile
    backend: str  # the backend that runs (for "auto": the one chosen on this machine)
    max_batch: int = 256  # a good batch size for throughput on this kind of CPU (see docs/benchmarks.md)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "backend": self.backend, "max_batch": self.max_batch}

    def _unsupported(self, call: str) -> InputError:
        return InputError("op", f"{call} is not available for a {self.kind} model")

    def sample(self, n: int, *, seed: int | None = None, labels: Sequence[int] | None = None) -> np.ndarray:
        """n images, float32 (n, 28, 28) in [0, 1]; z ~ N(0, I) from numpy's PCG64 with ``seed``."""
        raise self._unsupported("sample")

    def decode(self, z: Any, *, labels: Sequence[int] | None = None) -> np.ndarray:
        """Latent codes (n, latent) → images (n, 28, 28)."""
        raise self._unsupported("decode")

    def encode(self, x: Any, *, labels: Sequence[int] | None = None) -> np.ndarray:
        raise self._unsupported("encode")

    def reconstruct(self, x: Any, *, labels: Sequence[int] | None = None) -> np.ndarray:
        raise self._unsupported("reconstruct")

    def interpolate(self, a: Any, b: Any, *, steps: int = 8, label: int | None = None) -> np.ndarray:
        raise self._unsupported("interpolate")

    def generate(self, prompts: list[str], **options: Any) -> list[str]:
        """LM: one continuation per prompt (``max_new_tokens``, ``temperature``, ``top_k``, ``top_p``, ``seed``,
        ``stop``)."""
        raise self._unsupported("generate")

    def stream(self, prompt: str, **options: Any) -> Iterator[str]:
        """LM: the continuation of one prompt, piece by piece."""
        raise self._unsupported("stream")
