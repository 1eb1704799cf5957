"""`genloom quickstart` end to end with tiny budgets (CI smoke test): three models trained, exported, sampled."""
from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from genloom import cli, export


@pytest.mark.timeout(900)  # ~40 s on 2 quiet cores; generous for a loaded machine
def test_quickstart_trains_exports_and_samples_three_models(idx_dir: Path, tmp_path: Path, capsys) -> None:
    text = tmp_path / "play.txt"
    text.write_text("".join(f"ROMEO:\nWhat light through yonder window breaks, line {i}?\n\n" for i in range(150)),
                    encoding="utf-8")
    out = tmp_path / "qs"
    assert cli.main(["quickstart", "--out", str(out), "--data", str(idx_dir), "--text", str(text),
                     "--epochs", "1", "--gan-steps", "3", "--budget", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    models = json.loads(lines[-1])
    assert sorted(models) == ["gan", "lm", "vae"]
    for kind, path in models.items():
        assert export.read_header(path).kind == kind
    assert "nelbo" in json.loads(lines[0])  # the VAE's test ELBO
    assert any(line.startswith("ROMEO:") for line in lines)  # the LM's sample
    for png in ("vae_samples.png", "gan_samples.png"):
        assert (out / png).read_bytes().startswith(b"\x89PNG")
    gan_cfg = tomllib.loads((out / "gan" / "config.toml").read_text())
    assert gan_cfg["preset"] == "quickstart" and gan_cfg["steps"] == 3  # the quickstart GAN preset, steps capped
    assert export.read_header(models["gan"]).provenance["steps"] == 3
