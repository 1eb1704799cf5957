"""``genloom bench``: the lecture's benchmark table, measured on this machine, each row against a naive baseline.

Rows (each variant timed in the same process as its baseline, interleaved, medians over ``repeats`` rounds):
- VAE decode, batch 100, for the lecture's decoder 20→400→784 and the larger 20→400→800→784: p50/p99 latency
  over ``runs`` calls per round, samples/s, achieved GFLOP/s; per backend.
- GAN generator, batch 100 (the default conv generator), per backend.
- Flow: 64 images from the default flow model at its default steps and few-step settings vs 64 from the default GAN.
- LM tokens/s at batch 1 and 16, with the KV cache and without (recompute the context every token).
- VAE training seconds per epoch (60,000 images, batch 128): our step vs a pytorch/examples-style loop.

The naive baseline is plain ``model(x)`` in training mode, with autograd on and no inference_mode: what a first
PyTorch script does (the flow row's baseline is the GAN). ``ratio`` = variant p50 / baseline p50 (< 1 is faster).

``device`` (``genloom bench --device``): where every row runs. Off the CPU only the ``eager`` backend is timed (the
others are CPU backends) and every call ends with a device synchronisation. ``precision``: ``auto`` times the
backends asked for; ``fp32`` only the fp32 ones (eager, compile, onnx, numpy); ``bf16`` / ``fp16`` the model in
that type (on a CPU: the ``bf16`` backend; elsewhere eager on the cast model). The LM and training rows run in
fp32 whatever the precision; the flow rows' DiT too, their decoder on the backend ``auto`` chooses.
"""
from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from genloom.engine import backends, lite
from genloom.models.gan import GAN, GANConfig
from genloom.models.vae import VAE, VAEConfig

IMAGE_BACKENDS = ("eager", "onnx", "mixed", "bf16", "int8", "numpy")
FP32_BACKENDS = ("eager", "compile", "onnx", "numpy")
DEVICE = torch.device("cpu")  # where the rows run (``run(device=...)``)
DTYPE = torch.float32  # the image models' type off the CPU (``run(precision="bf16"|"fp16")``)


@dataclass
class Row:
    row: str  # what is measured
    variant: str  # "naive" baseline or a backend
    p50_ms: float
    p99_ms: float
    per_s: float  # samples/s, tokens/s or epochs/h per the row's unit
    unit: str
    ratio: float = 1.0  # p50 / naive p50
    gflops: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def cpu_peak_gflops() -> dict[str, float]:
    """A rough fp32 peak: cores × clock × 32 FLOP/cycle (two 256-bit FMA pipes: 2 × 8 lanes × 2 FLOP, as on
    AMD Zen 4, which runs AVX-512 on 256-bit pipes). bf16 ``vdpbf16ps`` doubles the lanes."""
    mhz = 0.0
    try:
        with open("/proc/cpuinfo") as f:
            mhz = max(float(line.split(":")[1]) for line in f if line.startswith("cpu MHz"))
    except (OSError, ValueError):
        pass
    cores = torch.get_num_threads()
    fp32 = cores * (mhz or 2500.0) / 1000 * 32
    return {"cores": cores, "ghz": (mhz or 2500.0) / 1000, "fp32": fp32, "bf16": 2 * fp32}


def _latencies(fn: Callable[[], Any], runs: int, warmup: int = 20) -> np.ndarray:
    for _ in range(warmup):
        fn()
    out = np.empty(runs)
    for i in range(runs):
        t = time.perf_counter()
        fn()
        out[i] = time.perf_counter() - t
    return out


def timed_rows(row: str, variants: dict[str, Callable[[], Any]], *, runs: int, repeats: int, items: int,
               unit: str, flops: float | None = None, warmup: int = 20, chunk: int = 10,
               baseline: str = "naive") -> list[Row]:
    """Time every variant ``runs`` times per round; p50/p99 are medians over ``repeats`` rounds. Within a round
    the variants take turns in chunks of ``chunk`` calls, so that all of them see the same background load (the
    machine is shared) while each keeps its weights in cache for a few calls."""
    if DEVICE.type != "cpu":  # a call is done when the device is done
        variants = {k: _synced(fn) for k, fn in variants.items()}
    p50: dict[str, list[float]] = {k: [] for k in variants}
    p99: dict[str, list[float]] = {k: [] for k in variants}
    for fn in variants.values():
        _latencies(fn, 0, warmup)
    chunk = max(1, min(chunk, runs))
    for _ in range(repeats):
        lat: dict[str, list[np.ndarray]] = {k: [] for k in variants}
        done = 0
        while done < runs:
            c = min(chunk, runs - done)
            for k, fn in variants.items():
                lat[k].append(_latencies(fn, c, 0))
            done += c
        for k in variants:
            all_lat = np.concatenate(lat[k])
            p50[k].append(float(np.percentile(all_lat, 50)))
            p99[k].append(float(np.percentile(all_lat, 99)))
    base = statistics.median(p50[baseline])
    rows = []
    for k in variants:
        m50, m99 = statistics.median(p50[k]), statistics.median(p99[k])
        spread = (max(p50[k]) - min(p50[k])) / m50 if m50 else 0.0
        rows.append(Row(row, k, m50 * 1e3, m99 * 1e3, items / m50, unit, m50 / base,
                        flops / m50 / 1e9 if flops else None, {"p50_spread": round(spread, 3)}))
    return rows


def _synced(fn: Callable[[], Any]) -> Callable[[], Any]:
    def call() -> Any:
        out = fn()
        torch.cuda.synchronize(DEVICE) if DEVICE.type == "cuda" else torch.mps.synchronize()
        return out

    return call


def backend_names(names: tuple[str, ...], device: torch.device, precision: str) -> tuple[str, ...]:
    """The backends ``genloom bench --backends … --device … --precision …`` times (see the module's docstring)."""
    from genloom.errors import GenloomError
    from genloom.device import check_device_precision

    check_device_precision(str(device), precision)
    if device.type != "cpu":
        return ("eager",)  # in the precision's type (the model is cast)
    keep = {"auto": names, "fp32": FP32_BACKENDS, "bf16": ("bf16",)}[precision]
    out = tuple(n for n in names if n in keep)
    if not out:
        raise GenloomError(f"--precision {precision} leaves none of --backends {','.join(names)} to time; add "
                           f"{' or '.join(keep)} to --backends")
    return out


def _mlp_flops(sizes: list[int], batch: int) -> float:
    return 2.0 * batch * sum(a * b for a, b in zip(sizes, sizes[1:]))  # one multiply-add = 2 FLOP per weight


def _is_mlp(module: nn.Module) -> bool:
    try:
        backends.mlp_layers(backends._split_head(module)[0])
    except ValueError:
        return False
    return True


def _image_variants(naive: Callable[[], Any], module: nn.Module, x: np.ndarray, path: str,
                    names: tuple[str, ...], threads: int | None) -> dict[str, Callable[[], Any]]:
    variants: dict[str, Callable[[], Any]] = {"naive": naive}
    for name in names:
        if name == "numpy":
            eng = lite.load(path, threads=threads or torch.get_num_threads())
            variants[name] = partial(eng._forward, x)
            continue
        if name == "mixed" and not (_is_mlp(module) and backends.bf16_kernels()):
            continue  # an MLP-only backend that needs bf16 kernels: no row for a conv generator or an AVX2 CPU
        run = backends.build(name, module, x, threads=threads)
        variants[name] = partial(run, x)
    return variants


def bench_vae(tmp: str, *, runs: int, repeats: int, threads: int | None, names: tuple[str, ...],
              batch: int = 100) -> list[Row]:
    from genloom import export

    rows = []
    for dec in ((400,), (400, 800)):
        torch.manual_seed(0)
        model = VAE(VAEConfig(dec_hidden=dec, activation="relu"))  # the lecture's MLP
        path = str(export.save(model, os.path.join(tmp, f"vae_{len(dec)}.safetensors")))
        z = np.random.default_rng(0).standard_normal((batch, 20), dtype=np.float32)
        model.to(DEVICE, DTYPE)
        zt = torch.from_numpy(z).to(DEVICE, DTYPE)
        model.train()  # naive: training mode, autograd recording, no inference_mode

        def naive(m: VAE = model, zt: torch.Tensor = zt) -> Any:
            return m.decode(zt)

        decoder = nn.Sequential(model.decoder, nn.Sigmoid())
        variants = _image_variants(naive, decoder, z, path, names, threads)
        sizes = [20, *dec, 784]
        label = f"VAE decode {'→'.join(map(str, sizes))}, batch {batch}"
        rows += timed_rows(label, variants, runs=runs, repeats=repeats, items=batch, unit="samples/s",
                           flops=_mlp_flops(sizes, batch))
    return rows


def bench_gan(tmp: str, *, runs: int, repeats: int, threads: int | None, names: tuple[str, ...],
              batch: int = 100) -> list[Row]:
    from genloom import export
    from genloom.engine.image import _Generator

    torch.manual_seed(0)
    model = GAN(GANConfig())  # default conv generator, DIM 64, kernel 5
    path = str(export.save(model, os.path.join(tmp, "gan.safetensors")))
    z = np.random.default_rng(0).standard_normal((batch, model.config.latent), dtype=np.float32)
    model.to(DEVICE, DTYPE)
    zt = torch.from_numpy(z).to(DEVICE, DTYPE)
    model.generator.train()

    def naive() -> Any:
        return model.generator(zt)

    variants = _image_variants(naive, _Generator(model.generator), z, path, names, threads)
    return timed_rows(f"GAN generator (conv, DIM 64, k5), batch {batch}", variants, runs=runs, repeats=repeats,
                      items=batch, unit="samples/s", warmup=3, chunk=2)


def bench_lm(*, repeats: int, lm_runs: int = 3, new_tokens: int = 64, prompt_len: int = 16) -> list[Row]:
    from genloom.models.lm_generate import generate
    from genloom.models.transformer import LMConfig, TransformerLM

    torch.manual_seed(0)
    vocab = [chr(c) for c in range(32, 97)]  # 65 characters, like tiny-shakespeare
    model = TransformerLM(LMConfig(vocab_size=65, block_size=128), vocab).to(DEVICE)  # the recipe's default sizes
    prompt = "".join(vocab[i % 65] for i in range(prompt_len))
    rows = []
    for b in (1, 16):
        prompts = [prompt] * b

        def naive(prompts: list[str] = prompts) -> Any:  # no cache, training mode, autograd on: recompute all
            model.train()
            idx = torch.tensor([model.encode(p) for p in prompts], device=DEVICE)  # (b, T0)
            for _ in range(new_tokens):
                logits = model(idx[:, -model.config.block_size:])  # (b, T, vocab)
                idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], 1)  # (b, T + 1)
            model.eval()

        def uncached(prompts: list[str] = prompts) -> Any:  # the same loop under inference_mode in eval mode
            with torch.inference_mode():
                idx = torch.tensor([model.encode(p) for p in prompts], device=DEVICE)
                for _ in range(new_tokens):
                    logits = model(idx[:, -model.config.block_size:])
                    idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], 1)

        def cached(prompts: list[str] = prompts) -> Any:
            with torch.inference_mode():
                generate(model.eval(), prompts, max_new_tokens=new_tokens, temperature=0.0)

        rows += timed_rows(f"LM {new_tokens} new tokens, batch {b} (4×128, prompt {prompt_len})",
                           {"naive": naive, "uncached": uncached, "kv-cache": cached}, runs=lm_runs, repeats=repeats,
                           items=b * new_tokens, unit="tokens/s", warmup=1, chunk=1)
    return rows


def bench_vae_train(*, steps: int, repeats: int, batch: int = 128) -> list[Row]:
    """Seconds per Fashion-MNIST epoch (60,000 images) extrapolated from ``steps`` timed steps."""
    torch.manual_seed(0)
    x = torch.rand(batch, 784).to(DEVICE)
    ours = VAE(VAEConfig(activation="relu")).to(DEVICE)
    tcfg = type("TrainCfg", (), {"weight_decay": 0.0, "lr": 1e-3, "betas": (0.9, 0.999)})
    opt = ours.configure_optimizers(tcfg)["main"]  # the Trainer's optimizer: fused AdamW
    ref = VAE(VAEConfig(activation="relu")).to(DEVICE)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-3)

    def our_step() -> None:
        out = ours.loss((x, None))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    def naive_step() -> None:  # pytorch/examples vae/main.py: BCE(sum) + KLD, Adam, per-batch loss.item()
        mu, logvar = ref.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        recon = torch.sigmoid(ref.decode_logits(z))
        loss = F.binary_cross_entropy(recon, x, reduction="sum") - 0.5 * torch.sum(1 + logvar - mu ** 2 - logvar.exp())
        ref_opt.zero_grad()
        loss.backward()
        ref_opt.step()
        loss.item()

    rows = timed_rows(f"VAE train step 784→400→20→400→784, batch {batch}", {"naive": naive_step, "genloom": our_step},
                      runs=steps, repeats=repeats, items=batch, unit="images/s", warmup=3, chunk=5)
    for r in rows:
        r.extra["s_per_epoch"] = round(60_000 / r.per_s, 2)
    return rows


def bench_flow(tmp: str, *, runs: int, repeats: int, n: int = 64) -> list[Row]:
    """n images from the default flow model (``genloom train flow``'s architecture and sampler) at its default
    steps and at few-step settings, against n images from the default GAN (``genloom train gan``), both through
    ``genloom.engine.load`` with its default backend. ``ratio`` = p50 / the GAN's p50."""
    from genloom import export
    from genloom.engine import load
    from genloom.engine.flow import FlowEngine
    from genloom.models.flow import FlowConfig, FlowModel, network_evaluations
    from genloom.recipes.flow import PRESETS as FLOW_PRESETS
    from genloom.recipes.gan import DEFAULT_LOSS, LOSS_DEFAULTS

    torch.manual_seed(0)
    gan = load(export.save(GAN(GANConfig(loss=DEFAULT_LOSS, **LOSS_DEFAULTS[DEFAULT_LOSS][1])),
                           os.path.join(tmp, "gan-default.safetensors")), device=str(DEVICE))
    cfg = FlowConfig()
    flow = load(export.save(FlowModel(cfg), os.path.join(tmp, "flow-default.safetensors")), device=str(DEVICE))
    # a reflow student (``genloom train flow --teacher``): same network, Euler, guidance in its conditional
    # velocity (w = 1: one batch of n rows per step instead of 2n)
    def student_of(name: str, **arch: Any) -> Any:
        c = dataclasses.replace(cfg, **arch, sampler="euler", guidance=1.0, distill_guidance=cfg.guidance)
        return load(export.save(FlowModel(c), os.path.join(tmp, f"{name}.safetensors")), device=str(DEVICE))

    student = student_of("flow-student", sample_steps=2)
    fast = FLOW_PRESETS["fast"]  # ``genloom train flow --preset fast``: a smaller DiT and decoder, 1 step
    fast_student = student_of("flow-fast-student", sample_steps=1, dim=fast["dim"], ae_dim=fast["ae_dim"],
                              patch=fast["patch"])
    assert isinstance(flow, FlowEngine) and isinstance(student, FlowEngine) and isinstance(fast_student, FlowEngine)
    variants: dict[str, Callable[[], Any]] = {"gan": lambda: gan.sample(n, seed=0)}
    settings = [(cfg.sampler, cfg.sample_steps), ("heun", 2), ("euler", 4), ("euler", 1)]  # default first
    for sampler, steps in settings:
        name = f"flow {sampler} {steps} ({network_evaluations(steps, sampler)} NFE)"
        # at the file's default guidance (w ≠ 1 runs the conditional and unconditional rows as one 2n batch)
        def call(s: str = sampler, k: int = steps) -> Any:
            return flow.sample(n, seed=0, steps=k, sampler=s)

        variants[name] = call
    for steps in (2, 1):
        def scall(k: int = steps) -> Any:
            return student.sample(n, seed=0, steps=k)

        variants[f"reflow student euler {steps} ({steps} NFE, n rows)"] = scall
    variants[f"preset fast (DiT {cfg.depth}×{fast['dim']}, patch {fast['patch']}, decoder width {fast['ae_dim']}): "
             "reflow student euler 1 (1 NFE)"] = lambda: fast_student.sample(n, seed=0)
    return timed_rows(f"{n} images: flow (DiT {cfg.depth}×{cfg.dim}) vs the default GAN", variants, runs=runs,
                      repeats=repeats, items=n, unit="samples/s", warmup=1, chunk=1, baseline="gan")


def run(*, only: set[str], runs: int, gan_runs: int, repeats: int, threads: int | None,
        names: tuple[str, ...] = IMAGE_BACKENDS, lm_runs: int = 3, train_steps: int = 50,
        flow_runs: int = 5, device: str = "cpu", precision: str = "auto") -> dict[str, Any]:
    import tempfile

    from genloom.device import resolve_device

    global DEVICE, DTYPE
    DEVICE = resolve_device(device)
    names = backend_names(names, DEVICE, precision)
    DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32) \
        if DEVICE.type != "cpu" else torch.float32
    if threads is not None:
        torch.set_num_threads(threads)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        if "vae" in only:
            rows += bench_vae(tmp, runs=runs, repeats=repeats, threads=threads, names=names)
        if "gan" in only:
            rows += bench_gan(tmp, runs=gan_runs, repeats=repeats, threads=threads, names=names)
        if "flow" in only:
            rows += bench_flow(tmp, runs=flow_runs, repeats=repeats)
    if "lm" in only:
        rows += bench_lm(repeats=repeats, lm_runs=lm_runs)
    if "train" in only:
        rows += bench_vae_train(steps=train_steps, repeats=repeats)
    return {"machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                        "device": str(DEVICE), "precision": precision, "backends": list(names),
                        "torch": torch.__version__, "load_avg": os.getloadavg()[0], "peak_gflops": cpu_peak_gflops()},
            "settings": {"runs": runs, "gan_runs": gan_runs, "flow_runs": flow_runs, "lm_runs": lm_runs, "train_steps": train_steps,
                         "repeats": repeats},
            "rows": [asdict(r) for r in rows]}


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    pk = m["peak_gflops"]
    lines = [f"device {m.get('device', 'cpu')}, precision {m.get('precision', 'auto')}, "
             f"threads {m['threads']}, torch {m['torch']}, load average {m['load_avg']:.1f}; rough peak "
             f"{pk['fp32']:.0f} GFLOP/s fp32, {pk['bf16']:.0f} bf16 ({pk['cores']} cores × {pk['ghz']:.2f} GHz × "
             f"32 FLOP/cycle)", "",
             "| benchmark | variant | p50 ms | p99 ms | throughput | GFLOP/s | vs naive |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        g = f"{r['gflops']:.0f}" if r["gflops"] else ""
        extra = f" ({r['extra']['s_per_epoch']} s/epoch)" if "s_per_epoch" in r["extra"] else ""
        lines.append(f"| {r['row']} | {r['variant']} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | "
                     f"{r['per_s']:,.0f} {r['unit']}{extra} | {g} | {r['ratio']:.2f}x |")
    return "\n".join(lines)
