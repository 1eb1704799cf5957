"""`genloom bench`: a tiny run prints a table / one JSON object with a naive baseline per row; bad flags fail."""
from __future__ import annotations

import json

import pytest

from genloom.cli import main


@pytest.mark.timeout(180)
def test_bench_json_has_a_baseline_per_row(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["bench", "--only", "vae", "--runs", "5", "--repeats", "1", "--backends", "eager,numpy", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    rows = out["rows"]
    assert {r["row"] for r in rows} == {"VAE decode 20→400→784, batch 100", "VAE decode 20→400→800→784, batch 100"}
    for r in rows:
        assert r["p50_ms"] > 0 and r["p99_ms"] >= r["p50_ms"] and r["gflops"] > 0
    naive = [r for r in rows if r["variant"] == "naive"]
    assert len(naive) == 2 and all(r["ratio"] == 1.0 for r in naive)
    assert {r["variant"] for r in rows} == {"naive", "eager", "numpy"}
    assert out["machine"]["peak_gflops"]["fp32"] > 0


@pytest.mark.timeout(180)
def test_bench_markdown(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--only", "vae", "--runs", "3", "--repeats", "1", "--backends", "eager"]) == 0
    text = capsys.readouterr().out
    assert "| benchmark | variant | p50 ms |" in text and "| naive |" in text and "GFLOP/s" in text


@pytest.mark.parametrize(("argv", "msg"), [
    (["--only", "vae,foo"], "--only takes"),
    (["--backends", "cuda"], "--backends: unknown cuda"),
    (["--runs", "0"], "--runs must be"),
])
def test_bench_bad_flags(capsys: pytest.CaptureFixture[str], argv: list[str], msg: str) -> None:
    assert main(["bench", *argv]) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1


def test_flow_row_is_timed_against_the_default_gan(tmp_path) -> None:
    from genloom.engine.bench import bench_flow

    rows = bench_flow(str(tmp_path), runs=1, repeats=1, n=2)
    by = {r.variant: r for r in rows}
    assert by["gan"].ratio == 1.0 and "flow heun 4 (8 NFE)" in by and "flow euler 1 (1 NFE)" in by
    assert "reflow student euler 1 (1 NFE, n rows)" in by
    assert any(k.startswith("preset fast (DiT 4×64") for k in by)
    assert all(r.p50_ms > 0 and r.unit == "samples/s" for r in rows)
