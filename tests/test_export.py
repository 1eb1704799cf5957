import json
import struct
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from genloom import export
from genloom.errors import ModelFileError
from genloom.models.vae import VAE, VAEConfig


@pytest.fixture
def vae_file(tmp_path):
    torch.manual_seed(0)
    m = VAE(VAEConfig(dec_hidden=(400, 800)))
    return m, export.save(m, tmp_path / "m.safetensors", provenance={"dataset": "fashion-mnist"})


def test_roundtrip_rebuilds_from_file_alone(vae_file):
    m, path = vae_file
    loaded = export.load(path)
    assert isinstance(loaded, VAE) and loaded.config == m.config and not loaded.training
    z = torch.randn(4, 20)
    assert torch.equal(loaded.decode(z), m.eval().decode(z))
    h = export.read_header(path)
    assert h.kind == "vae" and h.provenance["dataset"] == "fashion-mnist" and "genloom_version" in h.provenance


def test_seeded_samples_identical_after_reload(vae_file):
    m, path = vae_file
    a = m.eval().generate(8, generator=torch.Generator().manual_seed(5))
    b = export.load(path).generate(8, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_not_safetensors(tmp_path):
    p = tmp_path / "x.safetensors"
    p.write_bytes(b"hello world, not a model")
    with pytest.raises(ModelFileError, match="not a safetensors file"):
        export.load(p)


def test_truncated(vae_file, tmp_path):
    _, path = vae_file
    t = tmp_path / "t.safetensors"
    t.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(ModelFileError, match="truncated"):
        export.load(t)


def _rewrite(path, out, *, drop=None, add=None, meta_update=None, reshape=None):
    h = export.read_header(path)
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    if drop:
        tensors.pop(drop)
    if add:
        tensors[add] = torch.zeros(3)
    if reshape:
        tensors[reshape] = torch.zeros(2, 2)
    meta = dict(h.metadata, **(meta_update or {}))
    save_file(tensors, str(out), metadata=meta)
    return out


def test_missing_and_extra_tensors(vae_file, tmp_path):
    _, path = vae_file
    with pytest.raises(ModelFileError, match="missing tensors.*fc_mu.weight"):
        export.load(_rewrite(path, tmp_path / "a.safetensors", drop="fc_mu.weight"))
    with pytest.raises(ModelFileError, match="unexpected tensors.*bogus"):
        export.load(_rewrite(path, tmp_path / "b.safetensors", add="bogus"))


def test_shape_mismatch(vae_file, tmp_path):
    _, path = vae_file
    with pytest.raises(ModelFileError, match="fc_mu.weight.*shape"):
        export.load(_rewrite(path, tmp_path / "c.safetensors", reshape="fc_mu.weight"))


def test_unknown_kind_and_format(vae_file, tmp_path):
    _, path = vae_file
    with pytest.raises(ModelFileError, match="unknown model kind 'diffusion'"):
        export.load(_rewrite(path, tmp_path / "d.safetensors", meta_update={"genloom.kind": "diffusion"}))
    with pytest.raises(ModelFileError, match="format version '99'"):
        export.load(_rewrite(path, tmp_path / "e.safetensors", meta_update={"genloom.format": "99"}))


def test_plain_safetensors_is_not_a_genloom_file(tmp_path):
    p = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(p))
    with pytest.raises(ModelFileError, match="not a genloom export"):
        export.read_header(p)


def test_bad_config_in_metadata(vae_file, tmp_path):
    _, path = vae_file
    cfg = json.loads(export.read_header(path).metadata["genloom.config"])
    cfg["wings"] = 2
    with pytest.raises(ModelFileError, match="wings"):
        export.load(_rewrite(path, tmp_path / "f.safetensors", meta_update={"genloom.config": json.dumps(cfg)}))


def test_huge_header_length_rejected(tmp_path):
    p = tmp_path / "h.safetensors"
    p.write_bytes(struct.pack("<Q", 1 << 60) + b"{}")
    with pytest.raises(ModelFileError, match="truncated|not a safetensors"):
        export.read_header(p)


@pytest.mark.parametrize("cmd", ["info", "sample"])
def test_cli_one_line_error_and_exit_code(vae_file, tmp_path, cmd):
    _, path = vae_file
    t = tmp_path / "t.safetensors"
    t.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    args = [sys.executable, "-m", "genloom.cli", cmd, str(t)] + (["-o", str(tmp_path / "x.png")] if cmd == "sample" else [])
    r = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("genloom: error:") and "truncated" in lines[0]
    assert "Traceback" not in r.stderr


def test_vae_file_without_activation_field_loads_as_relu(vae_file, tmp_path):
    _, path = vae_file
    cfg = json.loads(export.read_header(path).metadata["genloom.config"])
    cfg.pop("activation")
    old = export.load(_rewrite(path, tmp_path / "old.safetensors", meta_update={"genloom.config": json.dumps(cfg)}))
    assert old.config.activation == "relu"
