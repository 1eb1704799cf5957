"""genloom serve vs LitServe on the same VAE, same load generator, side by side (alternating rounds).

    python benchmarks/serve_compare.py --litserve-python ../litenv/bin/python [--model M] [--rounds 3]

Each round starts one server, warms it up, runs ``serve_loadgen.py`` (64 keep-alive clients, VAE ``sample``
n = 1, .npy bodies) for ``--seconds``, stops it, then does the same for the other server (the order alternates
between rounds). Both: max batch 64, 2 ms batch window, one model worker process with 1 torch thread, one HTTP
process, no access log. Prints one JSON object with every round and the medians; req/s ratio = genloom / LitServe.
Without ``--model`` a default-size VAE (784-400-20, random weights) is written to a temp dir. 127.0.0.1 only.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} not ready after {timeout:.0f}s")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's whole process group (LitServe's worker processes outlive their parent otherwise)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
    except subprocess.TimeoutExpired:
        pass
    except ProcessLookupError:
        return
    time.sleep(1.0)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group
    except ProcessLookupError:
        pass
    proc.wait(5)


def loadgen(url: str, body: str, *, seconds: float, concurrency: int) -> dict:
    out = subprocess.run([sys.executable, str(HERE / "serve_loadgen.py"), "--url", url, "--body", body,
                          "--concurrency", str(concurrency), "--duration", str(seconds)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def start_genloom(model: Path, port: int) -> tuple[subprocess.Popen, str, str]:
    proc = subprocess.Popen([sys.executable, "-m", "genloom.cli", "serve", f"vae={model}", "--port", str(port),
                             "--max-batch-size", "64", "--max-wait-ms", "2", "--threads", "1", "--no-access-log",
                             "--log-level", "warning", "--max-queue", "1024"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_ready(f"http://127.0.0.1:{port}/readyz", proc)
    return proc, f"http://127.0.0.1:{port}/v1/models/vae/sample", '{"n": 1, "format": "npy"}'


def start_litserve(python: str, model: Path, port: int, *, fast_queue: bool) -> tuple[subprocess.Popen, str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([python, str(HERE / "serve_litserve_vae.py"), str(model), "--port", str(port),
                             "--max-batch-size", "64", "--batch-timeout", "0.002",
                             *(["--fast-queue"] if fast_queue else [])],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=tempfile.gettempdir(),
                            start_new_session=True)
    wait_ready(f"http://127.0.0.1:{port}/health", proc)
    return proc, f"http://127.0.0.1:{port}/predict", '{"n": 1}'


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--litserve-python", required=True, help="python of a venv with litserve (+ genloom on its path)")
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--fast-queue", action="store_true", help="LitServe with its ZeroMQ queue (fast_queue=True)")
    args = p.parse_args()
    tmp = tempfile.TemporaryDirectory()
    model = args.model
    if model is None:
        import torch

        from genloom.export import save
        from genloom.models.vae import VAE, VAEConfig

        torch.manual_seed(0)
        model = save(VAE(VAEConfig()), Path(tmp.name) / "vae.safetensors")
    servers = {"genloom": lambda port: start_genloom(model, port),
               "litserve": lambda port: start_litserve(args.litserve_python, model, port, fast_queue=args.fast_queue)}
    rounds: dict[str, list[dict]] = {"genloom": [], "litserve": []}
    for r in range(args.rounds):
        order = ["genloom", "litserve"] if r % 2 == 0 else ["litserve", "genloom"]
        for name in order:
            proc, url, body = servers[name](free_port())
            try:
                loadgen(url, body, seconds=2.0, concurrency=args.concurrency)  # warm-up
                res = loadgen(url, body, seconds=args.seconds, concurrency=args.concurrency)
            finally:
                stop(proc)
            rounds[name].append(res)
            print(json.dumps({"round": r, "server": name, **res}), file=sys.stderr)
    med = {name: {k: statistics.median(x[k] for x in rs) for k in ("rps", "p50_ms", "p99_ms")}
           for name, rs in rounds.items()}
    print(json.dumps({"concurrency": args.concurrency, "seconds": args.seconds, "fast_queue": args.fast_queue,
                      "median": med,
                      "rps_ratio": round(med["genloom"]["rps"] / med["litserve"]["rps"], 2),
                      "p99_ratio": round(med["litserve"]["p99_ms"] / med["genloom"]["p99_ms"], 2),
                      "rounds": rounds}))


if __name__ == "__main__":
    main()
