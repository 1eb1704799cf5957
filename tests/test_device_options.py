"""``--device`` / ``--precision`` on every command that runs a model (genloom/options.py) and
``engine.load(precision=...)``: an absent device or a bad precision is one line and exit 2 before any work; the
CPU runs, in the precision asked for."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from genloom import engine
from genloom.cli import main
from genloom.errors import GenloomError
from genloom.export import save
from genloom.models.transformer import LMConfig, TransformerLM
from genloom.models.vae import VAE, VAEConfig

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")


@pytest.fixture(scope="module")
def vae_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return save(VAE(VAEConfig(enc_hidden=(16,), dec_hidden=(16,), latent=4)),
                tmp_path_factory.mktemp("dev") / "vae.safetensors")


@pytest.fixture(scope="module")
def lm_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    lm = TransformerLM(LMConfig(vocab_size=5, block_size=16, n_layer=1, n_head=2, n_embd=16), list("\nabc "))
    return save(lm, tmp_path_factory.mktemp("dev") / "lm.safetensors")


def _argv(command: str, model: Path) -> list[str]:
    return {"serve": ["serve", str(model), "--port", "1"],  # never bound: the check comes first
            "worker": ["worker", "--amqp", "amqp://guest:guest@127.0.0.1:1/", str(model)],  # never connected
            "bench": ["bench", "--only", "vae", "--runs", "1", "--repeats", "1"]}[command]


BAD = [
    pytest.param(["--device", "cuda"], "--device cuda: no CUDA device available", "--device cpu", marks=NO_CUDA,
                 id="cuda-absent"),
    pytest.param(["--device", "cuda:3"], "no CUDA device available", "--device cpu", marks=NO_CUDA, id="cuda3-absent"),
    pytest.param(["--device", "tpu"], "--device 'tpu'", "choose auto", id="unknown-device"),
    pytest.param(["--precision", "fp64"], "--precision 'fp64'", "choose one of auto, fp32, bf16, fp16",
                 id="unknown-precision"),
    pytest.param(["--device", "cpu", "--precision", "fp16"], "--precision fp16 is for GPUs", "bf16",
                 id="fp16-on-cpu"),
]


@pytest.mark.parametrize("command", ["serve", "worker", "bench"])
@pytest.mark.parametrize(("flags", "problem", "fix"), BAD)
def test_a_missing_device_or_bad_precision_is_one_line_and_exit_2(command: str, flags: list[str], problem: str,
                                                                  fix: str, vae_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*_argv(command, vae_path), *flags]) == 2
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("genloom: error:"), err
    assert problem in lines[0] and fix in lines[0], lines[0]


def test_every_model_command_takes_the_shared_options() -> None:
    from genloom.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    for command in ("eval", "sample", "serve", "worker", "bench"):
        flags = {s for a in sub[command]._actions for s in a.option_strings}
        assert {"--device", "--precision"} <= flags, command
    for family in ("vae", "gan", "lm", "flow"):
        train = next(a for a in sub["train"]._actions if a.dest == "family").choices[family]
        assert {"--device", "--precision"} <= {s for a in train._actions for s in a.option_strings}


# -- the CPU works, in the precision asked for -----------------------------------------------------------------
def test_engine_load_precision(vae_path: Path, lm_path: Path) -> None:
    exact = engine.load(vae_path, backend="exact").sample(6, seed=3)
    fp32 = engine.load(vae_path, precision="fp32")
    assert fp32.backend == "eager" and (fp32.sample(6, seed=3) == exact).all()
    bf16 = engine.load(vae_path, precision="bf16")
    assert bf16.backend == "bf16"
    got = bf16.sample(6, seed=3)
    assert got.dtype == np.float32 and np.abs(got - exact).max() < 2e-2 and not (got == exact).all()
    lm = engine.load(lm_path, precision="bf16")
    assert next(lm.model.parameters()).dtype == torch.bfloat16  # the KV cache follows the weights
    text = lm.generate(["ab"], max_new_tokens=8, seed=0)[0]
    assert len(text) == 8 and set(text) <= set("\nabc ")
    for kw, msg in (({"precision": "fp64"}, "precision must be one of"),
                    ({"precision": "fp16"}, "'fp16' is for GPUs"),
                    ({"precision": "fp32", "backend": "int8"}, "disagree"),
                    ({"precision": "bf16", "backend": "onnx"}, "disagree")):
        with pytest.raises(GenloomError, match=msg):
            engine.load(vae_path, **kw)


def test_sample_cli_precision(vae_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s.npy"
    assert main(["sample", str(vae_path), "-n", "4", "--seed", "3", "--device", "cpu", "--precision", "fp32",
                 "-o", str(out)]) == 0
    assert (np.load(out) == engine.load(vae_path, backend="exact").sample(4, seed=3)).all()


def test_worker_runs_the_model_on_the_cpu_in_the_precision_asked(vae_path: Path) -> None:
    from genloom.queue.runner import ModelRunner
    from genloom.queue.worker import WorkerConfig

    cfg = WorkerConfig(url="amqp://guest:guest@127.0.0.1:5672/", models={"v": str(vae_path)}, device="cpu",
                       precision="bf16")
    runner = ModelRunner("v", cfg.models["v"], device=cfg.device, precision=cfg.precision)
    assert runner.engine.backend == "bf16"
    exact = ModelRunner("v", str(vae_path), device="cpu", precision="fp32")
    assert exact.engine.backend == "eager"


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_serve_runs_workers_on_the_cpu_in_the_precision_asked(vae_path: Path) -> None:
    import httpx

    from genloom.cli.serve import config_from_args
    from genloom.serve.app import create_app
    from genloom.serve.service import Server

    from genloom.cli import build_parser

    args = build_parser().parse_args(["serve", f"v={vae_path}", "--device", "cpu", "--precision", "fp32",
                                      "--no-access-log"])
    cfg = config_from_args(args)
    assert (cfg.models[0].settings.device, cfg.models[0].settings.precision) == ("cpu", "fp32")
    server = Server(cfg)
    await server.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(server)),
                                     base_url="http://test") as client:
            r = await client.post("/v1/models/v/sample", json={"n": 3, "seed": 4, "format": "json"})
            assert r.status_code == 200, r.text
            got = np.asarray(r.json()["images"], dtype=np.float32)
    finally:
        await server.stop()
    np.testing.assert_allclose(got, engine.load(vae_path, backend="exact").sample(3, seed=4), atol=1e-6)


@pytest.mark.timeout(120)
def test_bench_on_the_cpu_times_the_backends_of_the_precision(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["bench", "--only", "vae", "--runs", "3", "--repeats", "1", "--backends", "eager,bf16,numpy",
            "--device", "cpu", "--json"]
    for precision, variants in (("fp32", {"naive", "eager", "numpy"}), ("bf16", {"naive", "bf16"})):
        assert main([*base, "--precision", precision]) == 0
        out = json.loads(capsys.readouterr().out)
        assert {r["variant"] for r in out["rows"]} == variants
        assert out["machine"]["device"] == "cpu" and out["machine"]["precision"] == precision
    assert main([*base[:-3], "--backends", "int8", "--precision", "bf16"]) == 2
    assert "leaves none of --backends int8" in capsys.readouterr().err


def test_serve_config_file_sets_device_and_precision_per_model(vae_path: Path, tmp_path: Path) -> None:
    from genloom.serve.config import load_config

    toml = tmp_path / "serve.toml"
    toml.write_text(f'[defaults]\nprecision = "fp32"\n[models.v]\npath = "{vae_path}"\ndevice = "cpu"\n'
                    f'[models.w]\npath = "{vae_path}"\nprecision = "bf16"\n')
    cfg = {m.name: m.settings for m in load_config(models=[], config_file=toml).models}
    assert (cfg["v"].device, cfg["v"].precision, cfg["w"].device, cfg["w"].precision) == ("cpu", "fp32", "cpu", "bf16")
    if not torch.cuda.is_available():
        toml.write_text(f'[models.v]\npath = "{vae_path}"\ndevice = "cuda"\n')
        with pytest.raises(GenloomError, match="no CUDA device available"):
            load_config(models=[], config_file=toml)


def test_eval_precision(vae_path: Path, idx_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """eval --precision auto scores in fp32 (the same as fp32); bf16 runs under autocast: close, not identical."""
    res = {}
    for precision in ("auto", "fp32", "bf16"):
        assert main(["eval", str(vae_path), "--data", str(idx_dir), "--iwae-k", "0", "--json", "--device", "cpu",
                     "--precision", precision]) == 0
        res[precision] = json.loads(capsys.readouterr().out)
    key = next(k for k, v in res["fp32"].items() if isinstance(v, float))
    assert res["auto"][key] == res["fp32"][key]
    assert res["bf16"][key] == pytest.approx(res["fp32"][key], rel=1e-2) and res["bf16"][key] != res["fp32"][key]
