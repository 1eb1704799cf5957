"""LitServe serving the same genloom model, for the side-by-side benchmark (benchmarks/serve_compare.py).

Run with a LitServe venv that can also import genloom and torch (LitServe itself is never installed into the
project), e.g. ``python -m venv ../litenv && ../litenv/bin/pip install litserve`` plus a ``.pth`` file with the
project venv's site-packages; then ``../litenv/bin/python benchmarks/serve_litserve_vae.py MODEL --port 8001``.
Same model, same engine (``genloom.engine``), same per-request seeded noise and one batched decode, same batch
settings (max_batch_size, batch_timeout), one worker process, one API server, same .npy response body.
"""
from __future__ import annotations

import argparse
import io

import litserve as ls
import numpy as np
from fastapi import Response


class VAEAPI(ls.LitAPI):
    def __init__(self, path: str, **kw) -> None:
        super().__init__(**kw)
        self.path = path

    def setup(self, device: str) -> None:
        import genloom.engine

        self.engine = genloom.engine.load(self.path, threads=1)

    def decode_request(self, request: dict) -> tuple[int, int | None]:
        return int(request.get("n", 1)), request.get("seed")

    def batch(self, inputs: list) -> list:
        return inputs

    def predict(self, batch: list) -> list:
        from genloom.engine.base import check_seed, noise

        zs = [noise(check_seed(seed), n, self.engine.latent) for n, seed in batch]
        images = self.engine.decode(np.concatenate(zs))  # one forward pass for the batch
        out, start = [], 0
        for z in zs:
            out.append(images[start:start + len(z)])
            start += len(z)
        return out

    def unbatch(self, output: list) -> list:
        return output

    def encode_response(self, output: np.ndarray) -> Response:
        buf = io.BytesIO()
        np.save(buf, output.astype(np.float32))
        return Response(content=buf.getvalue(), media_type="application/x-npy")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--batch-timeout", type=float, default=0.002)
    p.add_argument("--fast-queue", action="store_true")
    args = p.parse_args()
    api = VAEAPI(args.model, max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout,
                 api_path="/predict")
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1, timeout=30,
                          fast_queue=args.fast_queue)
    server.run(host="127.0.0.1", port=args.port, num_api_servers=1, log_level="warning",
               generate_client_file=False)


if __name__ == "__main__":
    main()
