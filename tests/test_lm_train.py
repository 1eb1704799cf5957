"""LM data sources, evaluation, and the CLI end to end (train → eval → sample) on a small real text."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from genloom import cli, export
from genloom.data import text as text_data
from genloom.data.text import SequentialWindows, WindowBatches, default_corpus, load_text, shipped_corpus, split_tokens
from genloom.errors import DataError
from genloom.eval.lm import evaluate_lm
from genloom.models.transformer import LMConfig, TransformerLM


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """The first 20k characters of the Tiny Shakespeare copy shipped inside the package."""
    text = shipped_corpus().read_text(encoding="utf-8")[:20_000]
    p = tmp_path / "small.txt"
    p.write_text(text, encoding="utf-8")
    return p


def test_window_batches_shapes_targets_and_exact_resume() -> None:
    tokens = torch.arange(1000)
    src = WindowBatches(tokens, batch_size=4, block_size=8, steps=5)
    full = list(src.epoch(torch.Generator().manual_seed(3)))
    assert len(full) == len(src) == 5
    x, y = full[0]
    assert x.shape == y.shape == (4, 8)
    assert torch.equal(y, x + 1)  # y is x shifted by one character
    tail = list(src.epoch(torch.Generator().manual_seed(3), start=2))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full[2:], tail))
    with pytest.raises(DataError, match="block_size"):
        WindowBatches(torch.arange(5), batch_size=1, block_size=8, steps=1)


def test_sequential_windows_cover_every_target_once() -> None:
    tokens = torch.arange(103)
    src = SequentialWindows(tokens, block_size=10, batch_size=4)
    ys = torch.cat([y.reshape(-1) for _, y in src.epoch()])
    assert torch.equal(ys, torch.arange(1, 103))  # every token but the first, once, in order
    assert len(list(src.epoch())) == len(src) == 4  # 10 full windows in 3 batches + the 2-token tail


def test_split_is_nanogpt_90_10() -> None:
    tr, va = split_tokens(torch.arange(1000))
    assert len(tr) == 900 and va[0] == 900


def test_evaluate_lm_is_the_mean_next_char_loss() -> None:
    torch.manual_seed(0)
    m = TransformerLM(LMConfig(vocab_size=5, block_size=8, n_layer=1, n_head=1, n_embd=8), list("abcde")).eval()
    tokens = torch.randint(5, (30,))
    res = evaluate_lm(m, tokens, batch_size=2)
    nll = []
    for s in range(0, 29, 8):  # windows 0-7, 8-15, 16-23, 24-28
        x, y = tokens[s:min(s + 8, 29)], tokens[s + 1:min(s + 9, 30)]
        nll.append(F.cross_entropy(m(x[None])[0], y, reduction="sum").item())
    assert res["chars"] == 29
    assert res["val_loss"] == pytest.approx(sum(nll) / 29, rel=1e-5)
    assert res["bpc"] == pytest.approx(res["val_loss"] / math.log(2))


def test_load_text_errors(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        load_text(bad)
    with pytest.raises(DataError, match="no such text file"):
        load_text(tmp_path / "missing.txt")


@pytest.mark.timeout(120)
def test_default_corpus_is_shipped_and_verified(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("GENLOOM_DATA", raising=False)
    monkeypatch.chdir(tmp_path)  # nothing relative to the working directory is read
    p = default_corpus()
    assert p == shipped_corpus() and p.stat().st_size == 1_115_394
    assert text_data.corpus_ref(p) == "genloom:tinyshakespeare.txt"  # portable provenance, no install path
    assert text_data.resolve_corpus_ref("genloom:tinyshakespeare.txt") == p
    own = tmp_path / "data"
    own.mkdir()
    (own / "tinyshakespeare.txt").write_text("my own text\n", encoding="utf-8")
    monkeypatch.setenv("GENLOOM_DATA", str(own))  # the one data variable, as for the image datasets
    assert default_corpus() == own / "tinyshakespeare.txt"
    monkeypatch.setenv("GENLOOM_DATA", str(tmp_path / "elsewhere"))
    assert default_corpus() == shipped_corpus()
    monkeypatch.delenv("GENLOOM_DATA")
    out = tmp_path / "run"  # `genloom train lm` without --data, from a directory with nothing in it
    assert cli.main(["train", "lm", "--steps", "2", "--val-every", "2", "--batch-size", "2", "--block-size", "16",
                     "--n-layer", "1", "--n-head", "1", "--n-embd", "16", "--out", str(out), "--no-progress"]) == 0
    assert export.read_header(out / "model.safetensors").provenance["data"] == "genloom:tinyshakespeare.txt"
    assert cli.main(["eval", str(out / "model.safetensors"), "--json"]) == 0  # scores the shipped corpus' split
    damaged = tmp_path / "damaged.txt"
    damaged.write_bytes(p.read_bytes()[:-1])
    monkeypatch.setattr(text_data, "SHIPPED_CORPUS", damaged)
    with pytest.raises(DataError, match="SHA-256 mismatch"):
        shipped_corpus()


@pytest.mark.timeout(120)
def test_cli_train_eval_sample(corpus: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    rc = cli.main(["train", "lm", "--data", str(corpus), "--steps", "40", "--val-every", "20", "--threads", "1", "--batch-size", "16",
                   "--block-size", "32", "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--lr", "1e-2",
                   "--warmup-steps", "5", "--pos", "rope", "--out", str(out), "--no-progress"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 40 and summary["best_val_loss"] < math.log(65) - 0.5  # it learned something
    vals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in vals if r["type"] == "val"] == [20, 40]
    model_path = out / "model.safetensors"
    assert export.read_header(model_path).config["pos"] == "rope"

    assert cli.main(["eval", str(model_path), "--json"]) == 0  # default: the corpus' validation split
    res = json.loads(capsys.readouterr().out)
    assert res["val_loss"] == pytest.approx(summary["best_val_loss"], abs=1e-3)  # the same full split
    assert res["chars"] == len(corpus.read_text()) - int(len(corpus.read_text()) * 0.9) - 1

    assert cli.main(["eval", str(model_path), "--text", str(corpus), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["bpc"] == pytest.approx(res["val_loss"] / math.log(2)) and res["chars"] == len(corpus.read_text()) - 1

    assert cli.main(["sample", str(model_path), "--prompt", "First", "--max-new-tokens", "40", "--seed", "1"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("First") and len(text.rstrip("\n")) >= 40
    assert cli.main(["sample", str(model_path), "--prompt", "First", "--max-new-tokens", "40", "--seed", "1",
                     "--stream"]) == 0
    assert capsys.readouterr().out == text  # streaming prints the same text

    assert cli.main(["sample", str(model_path), "--prompt", "caf\u00e9"]) == 2
    assert "U+00E9" in capsys.readouterr().err
    assert cli.main(["sample", str(model_path), "--prompt", "a", "--top-p", "2"]) == 2
    assert "top_p: must be in (0, 1]" in capsys.readouterr().err
