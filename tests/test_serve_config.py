"""Server settings: NAME=PATH parsing, TOML per-model settings, command-line precedence, errors."""
from __future__ import annotations

from pathlib import Path

import pytest

from genloom.errors import GenloomError
from genloom.core.names import parse_model_arg
from genloom.serve.config import ModelSettings, load_config


def test_parse_model_arg() -> None:
    assert parse_model_arg("vae=runs/vae/model.safetensors") == ("vae", Path("runs/vae/model.safetensors"))
    assert parse_model_arg("runs/gan/model.safetensors") == ("gan", Path("runs/gan/model.safetensors"))
    assert parse_model_arg("exports/gan-v2.safetensors") == ("gan-v2", Path("exports/gan-v2.safetensors"))
    with pytest.raises(GenloomError, match="model name"):
        parse_model_arg("a b=x.safetensors")


def test_toml_defaults_per_model_and_cli_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for n in ("a", "b"):
        (tmp_path / f"{n}.safetensors").write_bytes(b"x")
    cfg_file = tmp_path / "serve.toml"
    cfg_file.write_text(f'''
port = 9001
[defaults]
max_wait_ms = 5.0
max_batch_size = 32
[models.a]
path = "{tmp_path / 'a.safetensors'}"
max_queue = 7
''')
    monkeypatch.setenv("GENLOOM_ADMIN_TOKEN", "sekrit")
    cfg = load_config(models=[f"b={tmp_path / 'b.safetensors'}"], config_file=cfg_file,
                      cli_settings={"max_batch_size": 8, "max_n": None}, cli_server={"host": "127.0.0.2"})
    specs = {s.name: s for s in cfg.models}
    assert cfg.port == 9001 and cfg.host == "127.0.0.2" and cfg.admin_token == "sekrit"
    assert specs["a"].settings == ModelSettings(max_wait_ms=5.0, max_batch_size=8, max_queue=7)
    assert specs["b"].settings == ModelSettings(max_wait_ms=5.0, max_batch_size=8)


@pytest.mark.parametrize("toml,words", [
    ("[defaults]\nmax_wait = 1", "unknown setting(s) max_wait"),
    ("[defaults]\nmax_queue = 0", "max_queue=0 is out of range"),
    ("[models.x]\nmax_queue = 3", "needs path"),
    ("bogus = 1", "unknown server setting(s) bogus"),
    ("port = ", "not valid TOML"),
])
def test_config_errors_name_the_problem(tmp_path: Path, toml: str, words: str) -> None:
    (tmp_path / "m.safetensors").write_bytes(b"x")
    f = tmp_path / "c.toml"
    f.write_text(toml)
    with pytest.raises(GenloomError, match=words.replace("(", r"\(").replace(")", r"\)")):
        load_config(models=[str(tmp_path / "m.safetensors")], config_file=f)


def test_no_models_or_missing_file(tmp_path: Path) -> None:
    with pytest.raises(GenloomError, match="no models to serve"):
        load_config(models=[])
    with pytest.raises(GenloomError, match="is not a file"):
        load_config(models=[str(tmp_path / "nope.safetensors")])
