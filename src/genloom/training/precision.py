"""Training precision: ``--precision auto|fp32|bf16|fp16`` on any device.

- CUDA: ``bf16`` = bf16 autocast; ``fp16`` = fp16 autocast with a gradient scaler; ``auto`` = bf16 where the GPU
  supports it, else fp16; TF32 matmuls except under an explicit ``fp32`` (exact IEEE, e.g. to compare with a CPU).
- CPU: ``bf16`` is the model's bf16 mode (``GenerativeModel.cpu_bf16``): ``matmul`` = every float32 matmul hands
  its inputs to oneDNN rounded to bf16 (no casts; the VAE), or ``autocast`` = torch.autocast to bf16 (the LM,
  the GAN). ``auto`` is **measured**: whether bf16 is faster depends on the CPU (AMX or not), on the model and on
  its size (on one AMX CPU the LM ``quick`` model was 1.35x slower in bf16 and the ``medium`` one 1.26x faster;
  on an AVX512-BF16 CPU without AMX bf16 was 2x slower). On a CPU without oneDNN bf16 kernels (AVX2 only: bf16
  is emulated, 9–15x slower per step) ``auto`` is fp32 without a probe. Elsewhere ``auto`` times a few training steps of
  the real model in fp32 and in bf16, alternating, on copies of the model, and takes bf16 only if it is
  ≥ ``MIN_SPEEDUP`` faster.
  The verdict is cached per CPU model, ISA, torch version, thread count and model shape in the user's cache dir
  (``$XDG_CACHE_HOME/genloom/precision.json``), so the probe runs once per machine and model.
- MPS: ``auto`` = fp32; ``bf16``/``fp16`` = autocast.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from genloom.device import cpu_bf16_kernels
from genloom.errors import GenloomError
from genloom.options import PRECISIONS as CHOICES

WARMUP_STEPS = 3
MIN_SPEEDUP = 1.10  # bf16 must beat fp32 by this much in the probe: a tie is not worth the rounding
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Plan:
    """What a resolved precision means for the training step."""

    precision: str  # fp32 | bf16 | fp16 (resolved)
    device_type: str  # cpu | cuda | mps
    autocast: torch.dtype | None  # torch.autocast dtype around the training step, or None
    cpu_matmul_bf16: bool = False  # oneDNN rounds fp32 matmul inputs to bf16 (CPU ``matmul`` mode)
    grad_scaler: bool = False  # fp16 on CUDA
    tf32: bool = False  # CUDA TF32 matmuls / convolutions
    how: str = ""  # why: "requested", "probe: fp32 12.1 ms, bf16 9.0 ms (1.34x)", "cached probe ..."


def check_choice(precision: str) -> None:
    if precision not in CHOICES:
        raise GenloomError(f"--precision {precision!r}: choose one of {', '.join(CHOICES)}")


def plan(precision: str, device: torch.device, *, cpu_bf16: str = "autocast",
         probe: Callable[[], tuple[float, float]] | None = None, probe_key: str = "") -> Plan:
    """Resolve ``precision`` for ``device``. On CPU ``auto`` calls ``probe()`` -> (fp32 s/step, bf16 s/step)
    unless the cache has a verdict for ``probe_key``; without a probe, ``auto`` on CPU is fp32."""
    check_choice(precision)
    dt = device.type
    if dt == "cuda":
        if precision == "auto":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
            how = "auto: bf16 supported" if precision == "bf16" else "auto: no bf16 on this GPU"
        else:
            how = "requested"
        if precision == "fp32":
            return Plan("fp32", dt, None, how=how)
        return Plan(precision, dt, _DTYPES[precision], grad_scaler=precision == "fp16", tf32=True, how=how)
    if dt == "mps":
        if precision in ("auto", "fp32"):
            return Plan("fp32", dt, None, how="auto: fp32 on MPS" if precision == "auto" else "requested")
        return Plan(precision, dt, _DTYPES[precision], how="requested")
    if dt != "cpu":
        raise GenloomError(f"--precision: device {device} is not supported; use cpu, cuda or mps")
    if precision == "fp16":
        raise GenloomError("--precision fp16 needs a GPU (CPUs have no fast fp16 training); use bf16, fp32 or auto")
    how = "requested"
    if precision == "bf16" and not cpu_bf16_kernels():
        how = "requested, on a CPU without bf16 matmul kernels (AVX2 only): emulated, expect it far slower than fp32"
    if precision == "auto":
        precision, how = _auto_cpu(probe, probe_key)
    if precision == "fp32":
        return Plan("fp32", dt, None, how=how)
    if cpu_bf16 == "matmul":
        return Plan("bf16", dt, None, cpu_matmul_bf16=True, how=how)
    return Plan("bf16", dt, torch.bfloat16, how=how)


def _auto_cpu(probe: Callable[[], tuple[float, float]] | None, key: str) -> tuple[str, str]:
    if probe is None:
        return "fp32", "auto: no probe"
    if not cpu_bf16_kernels():  # emulated bf16 (AVX2 only): tens of times slower, not worth a probe
        return "fp32", "auto: this CPU has no bf16 matmul kernels (AVX2 only)"
    full_key = cpu_key() + "|" + key
    cache = _read_cache()
    hit = cache.get(full_key)
    if isinstance(hit, dict) and hit.get("choice") in ("fp32", "bf16"):
        return hit["choice"], f"auto (cached probe: fp32 {hit['fp32_ms']} ms, bf16 {hit['bf16_ms']} ms per step)"
    t32, t16 = probe()
    choice = "bf16" if t32 / max(t16, 1e-12) >= MIN_SPEEDUP else "fp32"
    cache[full_key] = {"choice": choice, "fp32_ms": round(t32 * 1e3, 3), "bf16_ms": round(t16 * 1e3, 3),
                       "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    _write_cache(cache)
    return choice, f"auto (probe: fp32 {t32 * 1e3:.3g} ms, bf16 {t16 * 1e3:.3g} ms per step)"


def cpu_key() -> str:
    """The CPU model, its bf16-relevant ISA, torch's version and the thread count: what the verdict depends on."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        isa = f"amx={int(torch.cpu._is_amx_tile_supported())} avx512bf16={int(torch.cpu._is_avx512_bf16_supported())}"
    except AttributeError:
        isa = "isa=?"
    return f"{name} | {isa} | torch {torch.__version__} | {torch.get_num_threads()} threads"


def cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "genloom" / "precision.json"


def _read_cache() -> dict:
    try:
        d = json.loads(cache_path().read_text())
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(d: dict) -> None:
    p = cache_path()
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(d, indent=1, sort_keys=True))
        os.replace(tmp, p)
    except OSError:  # a read-only home: the probe just runs again next time
        pass


def model_key(kind: str, config_json: str, batch_shape: tuple[int, ...]) -> str:
    h = hashlib.sha256(config_json.encode()).hexdigest()[:12]
    return f"{kind} {h} batch {'x'.join(map(str, batch_shape))}"


def time_alternating(step: Callable[[str], None], *, budget_s: float = 3.0) -> tuple[float, float]:
    """Median seconds per ``step(mode)`` for mode fp32 and bf16, measured in alternating rounds (so load from
    other processes hits both alike). ``WARMUP_STEPS`` warm-up steps each (with one, the probe timed the VAE's
    bf16 steps before they reached steady state and kept fp32, which trained 1.4x fewer epochs in the same time
    on an AMX CPU); rounds of enough steps to take ~50 ms."""
    t = {}
    for _ in range(WARMUP_STEPS):  # warm-up: first-call allocations, oneDNN kernel creation, optimizer state —
        for mode in ("fp32", "bf16"):  # the first steps run several times slower than the steady state
            t0 = time.perf_counter()
            step(mode)
            t[mode] = time.perf_counter() - t0  # the last warm-up step sizes the rounds
    per = max(t.values())
    n = max(1, min(20, int(0.05 / max(per, 1e-6))))
    rounds = max(3, min(7, int(budget_s / max(2 * n * per, 1e-6))))
    res: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for r in range(rounds):
        for mode in (("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32")):
            t0 = time.perf_counter()
            for _ in range(n):
                step(mode)
            res[mode].append((time.perf_counter() - t0) / n)
    return statistics.median(res["fp32"]), statistics.median(res["bf16"])


@contextlib.contextmanager
def applied(p: Plan) -> Iterator[Plan]:
    """Process-wide settings for the block (oneDNN bf16 matmuls, TF32), restored afterwards."""
    mk = torch.backends.mkldnn.matmul  # type: ignore[attr-defined]  # not in torch's stubs
    prev_mk = mk.fp32_precision
    prev_f32 = torch.get_float32_matmul_precision()
    prev_cudnn = torch.backends.cudnn.allow_tf32
    try:
        mk.fp32_precision = "bf16" if p.cpu_matmul_bf16 else "ieee"
        if p.device_type == "cuda":
            torch.set_float32_matmul_precision("high" if p.tf32 else "highest")
            torch.backends.cudnn.allow_tf32 = p.tf32
        yield p
    finally:
        mk.fp32_precision = prev_mk
        if p.device_type == "cuda":
            torch.set_float32_matmul_precision(prev_f32)
            torch.backends.cudnn.allow_tf32 = prev_cudnn


def autocast(p: Plan) -> contextlib.AbstractContextManager:
    if p.autocast is None:
        return contextlib.nullcontext()
    return torch.autocast(p.device_type, dtype=p.autocast)


# -- the oneDNN switch on its own (benchmarks and older callers) ---------------------------------------------
MATMUL_CHOICES = ("ieee", "bf16")


@contextlib.contextmanager
def matmul_precision(precision: str) -> Iterator[str]:
    """Set oneDNN's float32 matmul precision (``ieee`` or ``bf16``) for the block; restores the previous one."""
    if precision not in MATMUL_CHOICES:
        raise ValueError(f"matmul precision must be one of {', '.join(MATMUL_CHOICES)}, not {precision!r}")
    backend = torch.backends.mkldnn.matmul  # type: ignore[attr-defined]  # not in torch's stubs
    prev = backend.fp32_precision
    backend.fp32_precision = precision
    try:
        yield precision
    finally:
        backend.fp32_precision = prev


def onednn_uses_bf16_for_fp32_matmuls() -> bool:
    """True when oneDNN really computes fp32 matmuls from bf16 inputs under ``bf16`` (AMX CPUs; an
    AVX512-BF16 CPU without AMX accepts the setting and computes exact fp32)."""
    x, w = torch.randn(64, 256, generator=torch.Generator().manual_seed(0)), \
        torch.randn(128, 256, generator=torch.Generator().manual_seed(1))
    exact = torch.nn.functional.linear(x, w)
    with matmul_precision("bf16"):
        low = torch.nn.functional.linear(x, w)
    return not torch.equal(low, exact)
