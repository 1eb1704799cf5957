"""The Python API under the CLI (genloom.train & co.), the CLI's error policy and its resume hint."""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import genloom
from genloom.api import family_parser, resume_command, train_args
from genloom.cli import main
from genloom.errors import ConfigError, GenloomError


def test_train_options_are_the_flags(tmp_path: Path) -> None:
    ns = train_args("vae", out=tmp_path, epochs=3, latent=8, conditional=True, dec_hidden="400,800",
                    time_budget=2, progress=False)
    cli = family_parser("vae").parse_args(["--out", str(tmp_path), "--epochs", "3", "--latent", "8",
                                           "--conditional", "--dec-hidden", "400,800", "--time-budget", "2",
                                           "--no-progress"])
    cli.family = "vae"
    assert vars(ns) == vars(cli)
    assert isinstance(ns.time_budget, float)


@pytest.mark.parametrize("kw, match", [
    ({"bogus": 1}, "unknown option 'bogus'.*valid: .*epochs"),
    ({"epochs": "three"}, "epochs.*--epochs"),
    ({"epochs": 2.5}, "must be int"),
    ({"likelihood": "poisson"}, "one of bernoulli, gaussian"),
    ({"conditional": "yes"}, "true or false"),
])
def test_bad_options_are_config_errors(tmp_path: Path, kw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        genloom.train("vae", out=tmp_path, **kw)


def test_unknown_family_and_invalid_values_checked_before_any_data_is_read(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown model family 'vqvae'"):
        genloom.train("vqvae", out=tmp_path)
    with pytest.raises(ConfigError, match="batch_size must be ≥ 1"):  # TrainConfig's check, not a ValueError
        genloom.train("vae", out=tmp_path, batch_size=0, data=tmp_path / "nowhere")


def test_api_train_returns_the_summary_and_sample_matches_the_cli(idx_dir: Path, tmp_path: Path, capsys) -> None:
    s = genloom.train("vae", out=tmp_path / "run", data=idx_dir, steps=5, latent=4, enc_hidden="16",
                      dec_hidden="16", batch_size=32)
    assert s["steps"] == 5 and Path(s["model"]).is_file() and "test_nelbo" in s
    assert main(["sample", s["model"], "-n", "3", "--seed", "7", "-o", str(tmp_path / "a.npy")]) == 0
    cli = np.load(tmp_path / "a.npy")
    api = genloom.sample(s["model"], 3, seed=7)
    assert cli.shape == (3, 28, 28) and np.array_equal(cli, api)


def test_resume_command_round_trips(tmp_path: Path) -> None:
    argv = ["--out", str(tmp_path / "r un"), "--epochs", "3", "--latent", "8", "--conditional", "--lr", "0.002",
            "--preset", "lecture"]
    ns = family_parser("vae").parse_args(argv)
    cmd = resume_command("vae", ns)
    words = shlex.split(cmd)
    assert words[:3] == ["genloom", "train", "vae"] and words[-1] == "--resume"
    again = family_parser("vae").parse_args(words[3:])
    assert {k: v for k, v in vars(again).items() if k != "resume"} == {k: v for k, v in vars(ns).items()
                                                                        if k != "resume"}
    assert again.resume


def test_user_errors_exit_2_with_one_line(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "genloom", "info", str(tmp_path / "missing.safetensors")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.startswith("genloom: error: ") and r.stderr.count("\n") == 1, r.stderr


def test_internal_errors_exit_1_with_the_traceback(tmp_path: Path) -> None:
    code = ("import sys, genloom.cli.info as i\n"
            "def boom(args): raise ValueError('an internal bug')\n"
            "i._cmd_info = boom\n"
            "from genloom.cli import main\n"
            f"sys.exit(main(['info', {str(tmp_path)!r}]))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert "Traceback" in r.stderr and "ValueError: an internal bug" in r.stderr
    assert "genloom: error" not in r.stderr


def test_config_error_is_a_genloom_error_and_a_value_error() -> None:
    assert issubclass(ConfigError, GenloomError) and issubclass(ConfigError, ValueError)
    assert json.dumps(genloom.__all__)
