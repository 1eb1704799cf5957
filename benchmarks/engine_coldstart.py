"""Cold start: process start → first sample per family and path, and load time of a ~1 GB model file (mmap vs read).

    .venv/bin/python benchmarks/engine_coldstart.py [--repeats 5] [--big-gb 1.0] [--json]

Each measurement is a fresh ``python`` process; the parent notes the time just before starting it and the child
prints the time right after its first sample, so the number covers interpreter start, imports, load, first call
(not exit). ``python -c pass`` is measured alongside as the floor. The big file is written to a temporary
directory and deleted afterwards; "cold" runs first drop it from the page cache with posix_fadvise(DONTNEED).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = {
    "python -c pass (floor)": "import time; print(time.time())",
    "VAE, numpy path (no torch)": "from genloom.engine.lite import load; load({p!r}).sample(1, seed=0)",
    "GAN, numpy path (no torch)": "from genloom.engine.lite import load; load({p!r}).sample(1, seed=0)",
    "VAE, torch engine": "from genloom.engine import load; load({p!r}, backend='eager').sample(1, seed=0)",
    "GAN, torch engine": "from genloom.engine import load; load({p!r}, backend='eager').sample(1, seed=0)",
    "LM, torch engine (1 token)": "from genloom.engine import load; load({p!r}).generate(['A'], max_new_tokens=1)",
}
BIG = {  # load only (imports done before the clock starts) → first sample
    "mmap (numpy path)": ("import numpy; from genloom.engine.lite import load", "load({p!r}).sample(1, seed=0)"),
    "full read (numpy)": ("import numpy as np; from safetensors.numpy import load as sload; "
                          "from genloom.engine.lite import load",
                          "d = sload(open({p!r}, 'rb').read()); load({p!r}).sample(1, seed=0)"),
    "torch engine (safe_open)": ("import torch; from genloom.engine import load",
                                 "load({p!r}, backend='eager').sample(1, seed=0)"),
}


def _time_child(code: str) -> float:
    body = code if code.startswith("import time; print") else f"import time\n{code}\nprint(time.time())"
    t0 = time.time()
    out = subprocess.run([sys.executable, "-c", body], capture_output=True, text=True, timeout=120, check=True)
    return float(out.stdout.strip().splitlines()[-1]) - t0


def _time_load(setup: str, code: str) -> float:
    body = f"{setup}\nimport time\nt = time.perf_counter()\n{code}\nprint(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", body], capture_output=True, text=True, timeout=300, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def write_big(path: Path, gb: float) -> Path:
    """A VAE file whose encoder is ~``gb`` GB (the decoder is the lecture's 20→400→784), written with numpy."""
    import numpy as np
    from safetensors.numpy import save_file

    h2 = int(gb * 2**30 / 4 / 16384)  # encoder 784 → 16384 → h2 holds ~gb GB of float32
    cfg = {"x_dim": 784, "enc_hidden": [16384, h2], "dec_hidden": [400], "latent": 20, "likelihood": "bernoulli",
           "beta": 1.0, "num_classes": 0, "image_shape": [1, 28, 28], "activation": "relu"}
    shapes = {"encoder.0.0.weight": (16384, 784), "encoder.0.0.bias": (16384,), "encoder.0.2.weight": (h2, 16384),
              "encoder.0.2.bias": (h2,), "fc_mu.weight": (20, h2), "fc_mu.bias": (20,), "fc_logvar.weight": (20, h2),
              "fc_logvar.bias": (20,), "decoder.0.weight": (400, 20), "decoder.0.bias": (400,),
              "decoder.2.weight": (784, 400), "decoder.2.bias": (784,)}
    rng = np.random.default_rng(0)
    tensors = {k: (rng.standard_normal(s, dtype=np.float32) * 0.01) for k, s in shapes.items()}
    save_file(tensors, str(path), metadata={"genloom.format": "1", "genloom.kind": "vae",
                                            "genloom.config": json.dumps(cfg), "genloom.provenance": "{}"})
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--big-gb", type=float, default=1.0)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--skip-start", action="store_true", help="only the big-file measurements")
    args = ap.parse_args()

    import torch

    from genloom import export
    from genloom.models.gan import GAN, GANConfig
    from genloom.models.transformer import LMConfig, TransformerLM
    from genloom.models.vae import VAE, VAEConfig

    res: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        torch.manual_seed(0)
        paths = {"VAE": export.save(VAE(VAEConfig(activation="relu")), d / "vae.safetensors"),
                 "GAN": export.save(GAN(GANConfig()), d / "gan.safetensors"),
                 "LM": export.save(TransformerLM(LMConfig(vocab_size=65, block_size=128),
                                                 [chr(c) for c in range(32, 97)]), d / "lm.safetensors")}
        times: dict[str, list[float]] = {k: [] for k in CHILD} if not args.skip_start else {}
        for _ in range(args.repeats if times else 0):  # interleaved rounds
            for name, code in CHILD.items():
                times[name].append(_time_child(code.format(p=str(paths.get(name.split(",")[0], "")))))
        for name, ts in times.items():
            res[f"start → first sample: {name}"] = {"median_s": statistics.median(ts), "min_s": min(ts),
                                                     "max_s": max(ts)}
        big = write_big(d / "big.safetensors", args.big_gb)
        size_gb = big.stat().st_size / 2**30
        for cache in ("warm", "cold"):
            bt: dict[str, list[float]] = {k: [] for k in BIG}
            for _ in range(args.repeats):
                for name, (setup, code) in BIG.items():
                    if cache == "cold":
                        _drop_cache(big)
                    bt[name].append(_time_load(setup, code.format(p=str(big))))
            for name, ts in bt.items():
                res[f"{size_gb:.2f} GB file, load → first sample, {cache} page cache: {name}"] = {
                    "median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts)}
        big.unlink()
    out = {"load_avg": os.getloadavg()[0], "repeats": args.repeats, "results": res}
    if args.json:
        print(json.dumps(out))
        return
    print(f"load average {out['load_avg']:.1f}, {args.repeats} runs each (median [min–max] seconds)\n")
    print("| measurement | median s | min–max s |\n|---|---:|---:|")
    for k, v in res.items():
        print(f"| {k} | {v['median_s']:.3f} | {v['min_s']:.3f}–{v['max_s']:.3f} |")


if __name__ == "__main__":
    main()
