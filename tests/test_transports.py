"""Acceptance of the one inference core: the same request through the CLI, Python, HTTP (`genloom serve` over
loopback) and AMQP (`genloom worker` on the real broker) gives the same result, and the same bad request the same
error text and limit. One shared fixture: tiny VAE / GAN / LM files, one server, two workers (exact and default)."""
from __future__ import annotations

import asyncio
import io
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import numpy as np
import pytest
import torch

from genloom import cli
from genloom.core.requests import RequestError
from genloom.core.supervision import stop_processes
from genloom.engine import load
from genloom.export import save
from genloom.models.gan import GAN, GANConfig
from genloom.models.transformer import LMConfig, TransformerLM
from genloom.queue import admin
from genloom.queue.client import QueueClient
from genloom.queue.messages import decode_images
from queue_helpers import require_broker, tiny_vae, unique_model

pytestmark = pytest.mark.timeout(240)
GENLOOM = [sys.executable, "-m", "genloom.cli"]
VOCAB = list("\n abcdefgh")
FAMILIES = ("vae", "gan", "lm")


def _files(d: Path) -> dict[str, Path]:
    torch.manual_seed(0)
    gan = GAN(GANConfig(arch="conv", dim=4, latent=4, kernel=3, gen_norm="batch"))
    torch.manual_seed(0)
    lm = TransformerLM(LMConfig(vocab_size=len(VOCAB), block_size=16, n_layer=1, n_head=2, n_embd=16), VOCAB)
    return {"vae": tiny_vae(d / "vae.safetensors", num_classes=3), "gan": save(gan, d / "gan.safetensors"),
            "lm": save(lm, d / "lm.safetensors")}


class Stack:
    """The running transports: the server's URL, the AMQP url and model names per (family, exact?)."""

    def __init__(self, files: dict[str, Path], url: str, port: int, names: dict[bool, str]) -> None:
        self.files, self.amqp, self.http = files, url, f"http://127.0.0.1:{port}"
        self.names = names  # exact? -> AMQP model-name prefix

    def http_name(self, family: str, exact: bool) -> str:
        return family if exact or family == "lm" else f"{family}-fast"

    def amqp_name(self, family: str, exact: bool) -> str:
        return f"{self.names[exact]}-{family}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    url = require_broker()
    d = tmp_path_factory.mktemp("transports")
    files = _files(d)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # exact models under the family's name, the default backend under "<family>-fast"; a 30 ms window batches
    # the concurrent requests of a test together
    toml = ["[defaults]", "max_wait_ms = 30.0"]
    for fam, path in files.items():
        toml += [f"[models.{fam}]", f'path = "{path}"', 'backend = "exact"']
        if fam != "lm":
            toml += [f"[models.{fam}-fast]", f'path = "{path}"']
    (d / "serve.toml").write_text("\n".join(toml) + "\n")
    names = {True: unique_model(), False: unique_model()}
    procs = [subprocess.Popen([*GENLOOM, "serve", "--config", str(d / "serve.toml"), "--port", str(port),
                               "--no-access-log"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)]
    for exact, prefix in names.items():
        procs.append(subprocess.Popen(
            [*GENLOOM, "worker", *(f"{prefix}-{fam}={p}" for fam, p in files.items()), "--amqp", url,
             "--name", prefix, "--batch-timeout-ms", "30", *(["--backend", "exact"] if exact else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True))
    st = Stack(files, url, port, names)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(st.http + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert all(p.poll() is None for p in procs), [p.stderr.read() for p in procs if p.poll() is not None]
            assert time.monotonic() < deadline, "genloom serve did not become ready"
            time.sleep(0.3)
        for exact in (True, False):
            for fam in FAMILIES:
                asyncio.run(admin.wait_for_consumers(url, st.amqp_name(fam, exact), 1, timeout=180))
        yield st
    finally:
        stop_processes(procs)
        for exact in (True, False):
            for fam in FAMILIES:
                asyncio.run(admin.delete_model_queues(url, st.amqp_name(fam, exact)))


# -- (a) one seed, one result ---------------------------------------------------------------------------------
IMAGE = {"vae": {"n": 3, "seed": 11, "labels": [2]}, "gan": {"n": 3, "seed": 11}}
OTHERS = {"vae": [{"n": 2, "seed": 1}, {"n": 5, "seed": 2, "labels": [0]}, {"n": 1}],
          "gan": [{"n": 2, "seed": 1}, {"n": 5, "seed": 2}, {"n": 1}]}
TEXT = {"prompt": "ab", "max_new_tokens": 12, "temperature": 0.8, "seed": 5}
TEXT_OTHERS = [{"prompt": "ba", "max_new_tokens": 7, "temperature": 0.8, "seed": 1},
               {"prompt": "h", "max_new_tokens": 15, "temperature": 0.5}]


async def _http_many(st: Stack, name: str, op: str, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=st.http, timeout=60) as c:
        return list(await asyncio.gather(*(c.post(f"/v1/models/{name}/{op}", json=b) for b in bodies)))


async def _amqp_many(st: Stack, name: str, op: str, params: list[dict[str, Any]]) -> list[Any]:
    async with QueueClient(st.amqp, timeout=60) as c:
        return await c.run_many(name, params, op=op)


def _cli_images(path: Path, p: dict[str, Any], out: Path, *backend: str) -> np.ndarray:
    argv = ["sample", str(path), "-n", str(p["n"]), "--seed", str(p["seed"]), "-o", str(out), *backend]
    if p.get("labels"):
        argv += ["--labels", ",".join(map(str, p["labels"]))]
    assert cli.main(argv) == 0
    return np.load(out)


def _u8(x: np.ndarray) -> np.ndarray:
    return np.rint(np.asarray(x, np.float64) * 255).astype(int)


@pytest.mark.parametrize("family", ["vae", "gan"])
def test_a_seeded_image_request_is_the_same_on_every_transport(stack: Stack, family: str, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    path, p = stack.files[family], IMAGE[family]
    exact, default = load(path, backend="exact"), load(path)
    ref = exact.sample(**p)  # Python, exact fp32
    fast_ref = default.sample(**p)  # Python, the default backend
    results: dict[str, tuple[np.ndarray, np.ndarray]] = {"cli": (
        _cli_images(path, p, tmp_path / "e.npy", "--backend", "exact"), _cli_images(path, p, tmp_path / "d.npy"))}
    got = []
    for is_exact in (True, False):
        # the request among others sent at the same time: it is batched with them (30 ms window)
        r = asyncio.run(_http_many(stack, stack.http_name(family, is_exact), "sample",
                                   [*({**o, "format": "npy"} for o in OTHERS[family]), {**p, "format": "npy"}]))
        assert all(x.status_code == 200 for x in r), [x.text for x in r]
        got.append(np.load(io.BytesIO(r[-1].content)))
    results["http"] = (got[0], got[1])
    got = []
    for is_exact in (True, False):
        r = asyncio.run(_amqp_many(stack, stack.amqp_name(family, is_exact), "sample",
                                   [*({**o, "format": "f32"} for o in OTHERS[family]), {**p, "format": "f32"}]))
        assert all(x.ok for x in r), r
        got.append(decode_images(r[-1].result))
    results["amqp"] = (got[0], got[1])
    capsys.readouterr()
    for transport, (e, d) in results.items():
        assert e.dtype == np.float32 and e.shape == (3, 28, 28)
        assert np.array_equal(e, ref), f"{transport}: backend=exact is not bit-identical to engine.sample"
        assert np.abs(_u8(d) - _u8(fast_ref)).max() <= 1, f"{transport}: the default backend's 8-bit picture differs"


def test_a_seeded_generation_is_the_same_text_on_every_transport(stack: Stack,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = stack.files["lm"]
    text = load(path).generate([TEXT["prompt"]], **{k: v for k, v in TEXT.items() if k != "prompt"})[0]
    assert len(text) == TEXT["max_new_tokens"]
    capsys.readouterr()
    assert cli.main(["sample", str(path), "--prompt", TEXT["prompt"], "--max-new-tokens", "12",
                     "--temperature", "0.8", "--seed", "5"]) == 0
    assert capsys.readouterr().out == TEXT["prompt"] + text + "\n"
    r = asyncio.run(_http_many(stack, "lm", "generate", [*TEXT_OTHERS, TEXT]))
    assert r[-1].status_code == 200 and r[-1].json()["text"] == text
    for is_exact in (True, False):
        a = asyncio.run(_amqp_many(stack, stack.amqp_name("lm", is_exact), "generate", [*TEXT_OTHERS, TEXT]))
        assert a[-1].ok and a[-1].result["text"] == text


# -- (b) one bad request, one error -----------------------------------------------------------------------------
BAD = [
    ("vae", "sample", {"n": 0}, "n: must be between 1 and 1024, got 0"),
    ("vae", "sample", {"n": 1025}, "n: must be between 1 and 1024, got 1025"),
    ("vae", "sample", {"n": 2, "seed": -1}, "seed: must be between 0 and 2**63 - 1, got -1"),
    ("vae", "sample", {"n": 2, "labels": [5]}, "labels: value 5 out of range 0..2"),
    ("vae", "sample", {"n": 3, "labels": [0, 1]}, "labels: has 2 values but n is 3; give one label or n labels"),
    ("gan", "sample", {"n": 2, "labels": [1]}, "labels: given but this model is not conditional; pass null"),
    ("lm", "generate", {"prompt": "ab", "max_new_tokens": 5000},
     "max_new_tokens: must be between 1 and 4096, got 5000"),
    ("lm", "generate", {"prompt": "ab", "temperature": 11.5}, "temperature: must be between 0 and 10, got 11.5"),
    ("lm", "generate", {"prompt": "ab", "top_p": 1.5}, "top_p: must be in (0, 1], got 1.5"),
    ("lm", "generate", {"prompt": "ab", "top_k": 0}, "top_k: must be ≥ 1, got 0"),
    ("lm", "generate", {"prompt": "xyz"},
     "prompt: characters 'x' (U+0078), 'y' (U+0079), 'z' (U+007A) are not in the model's vocabulary"),
    ("lm", "generate", {"prompt": "ab", "stop": [""]},
     "stop: must be a non-empty string or a list of at most 8 non-empty strings"),
]
FLAGS = {"n": "-n", "seed": "--seed", "max_new_tokens": "--max-new-tokens", "temperature": "--temperature",
         "top_p": "--top-p", "top_k": "--top-k", "prompt": "--prompt"}


def _cli_argv(path: Path, params: dict[str, Any], out: Path) -> list[str]:
    argv = ["sample", str(path)]
    for k, v in params.items():
        if k == "labels":
            argv += ["--labels", ",".join(map(str, v))]
        elif k == "stop":
            argv += [x for s in v for x in ("--stop", s)]
        else:
            argv += [FLAGS[k], str(v)]
    return argv + (["-o", str(out)] if "prompt" not in params else [])


def test_b_the_same_bad_request_gets_the_same_error_on_every_transport(stack: Stack, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    engines = {fam: load(p, backend="exact") for fam, p in stack.files.items()}
    for family, op, params, text in BAD:
        # Python
        eng = engines[family]
        with pytest.raises(RequestError) as e:
            if op == "sample":
                eng.sample(**params)
            else:
                eng.generate([params["prompt"]], **{k: v for k, v in params.items() if k != "prompt"})
        assert str(e.value) == text, ("python", params)
        # CLI: one line, exit 2
        capsys.readouterr()
        assert cli.main(_cli_argv(stack.files[family], params, tmp_path / "x.npy")) == 2, params
        assert capsys.readouterr().err == f"genloom: error: {text}\n", ("cli", params)
        # HTTP: 422 naming the field
        r = asyncio.run(_http_many(stack, family, op, [params]))[0]
        assert r.status_code == 422 and r.json() == {"error": text, "field": text.split(":")[0]}, ("http", r.text)
        # AMQP: an error answer, code invalid (dead-lettered)
        a = asyncio.run(_amqp_many(stack, stack.amqp_name(family, True), op, [params]))[0]
        assert not a.ok and a.code == "invalid" and a.error == text, ("amqp", a)
    assert not list(tmp_path.iterdir())  # no CLI call wrote anything
