"""benchmarks/gpu_check.py in its CPU dry-run mode: the same flow as on a GPU machine (a CPU reference run, a
"one device" run and a 2-process run of the same steps, the loss checks, the figures), with --device cpu."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_compare_states_its_tolerances() -> None:
    g = _gpu_check()
    ref = [10.0, 9.0, 8.0, 7.0, 6.0, 5.0]
    assert g.compare(ref, list(ref))[2]
    assert not g.compare(ref, [10.1] + ref[1:])[2]  # first loss off by 1e-2 > 1e-3
    assert not g.compare(ref, ref[:1] + [x * 1.2 for x in ref[1:]])[2]  # trained elsewhere
    assert not g.compare(ref, ref[:-1])[2]  # fewer steps


@pytest.mark.skipif(torch.cuda.is_available(), reason="the real check runs on this machine's GPU instead")
def test_without_a_gpu_it_says_so(capsys) -> None:
    assert _gpu_check().main([]) == 2
    assert "--dry-run" in capsys.readouterr().err


def test_dry_run_on_cpu(idx_dir, capsys, monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    rc = _gpu_check().main(["--dry-run", "--families", "vae", "--steps", "10", "--data", str(idx_dir), "--json"])
    report = json.loads(capsys.readouterr().out)
    fam = report["families"]["vae"]
    assert set(fam["runs"]) == {"cpu", "one", "all"} and fam["runs"]["all"]["world_size"] == 2
    for run in fam["runs"].values():
        assert run["steps_per_s"] > 0 and run["samples_per_s"] > 0 and run["peak_mb"] > 0
    assert fam["checks"]["one_vs_cpu"]["first_rel"] == 0.0  # the same device: the same numbers
    assert fam["checks"]["all_vs_one"]["ok"]
    assert rc == 0 and report["ok"]
