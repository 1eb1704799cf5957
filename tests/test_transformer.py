"""The character Transformer: shapes, causality, multi-head attention, tokenizer, export round trip."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from genloom import export
from genloom.data.text import CharTokenizer
from genloom.errors import GenloomError
from genloom.models import model_class
from genloom.models.transformer import LMConfig, TransformerLM

VOCAB = sorted(set("abcdefgh \n"))


def tiny(**kw) -> TransformerLM:
    torch.manual_seed(0)
    cfg = LMConfig(**{"vocab_size": len(VOCAB), "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 16, **kw})
    return TransformerLM(cfg, VOCAB).eval()


@pytest.mark.parametrize("pos,mlp", [("learned", "gelu"), ("rope", "swiglu"), ("rope", "gelu")])
def test_shapes_and_causality(pos: str, mlp: str) -> None:
    m = tiny(pos=pos, mlp=mlp)
    x = torch.randint(len(VOCAB), (3, 10))
    logits = m(x)
    assert logits.shape == (3, 10, len(VOCAB))
    x2 = x.clone()
    x2[:, 6:] = (x2[:, 6:] + 1) % len(VOCAB)  # change the future
    assert torch.allclose(m(x2)[:, :6], logits[:, :6], atol=1e-6)  # the past does not see it
    assert not torch.allclose(m(x2)[:, 6:], logits[:, 6:])


def test_attention_matches_explicit_multi_head_softmax() -> None:
    m = tiny(n_head=4, n_embd=16)
    attn = m.blocks[0].attn
    x = torch.randn(2, 5, 16)
    q, k, v = attn.c_attn(x).split(16, dim=2)
    heads = lambda t: t.view(2, 5, 4, 4).transpose(1, 2)  # (B, nh, T, hs)
    q, k, v = heads(q), heads(k), heads(v)
    scores = q @ k.transpose(-2, -1) / math.sqrt(4)  # (B, nh, T, T)
    scores = scores.masked_fill(torch.triu(torch.ones(5, 5, dtype=torch.bool), 1), float("-inf"))
    y = (F.softmax(scores, -1) @ v).transpose(1, 2).reshape(2, 5, 16)
    assert torch.allclose(attn(x), attn.c_proj(y), atol=1e-5)


def test_weight_tying_and_loss() -> None:
    m = tiny()
    assert m.lm_head.weight is m.wte.weight
    x = torch.randint(len(VOCAB), (2, 8))
    out = m.loss((x, x))
    assert out.n == 16
    assert abs(out.loss.item() - math.log(len(VOCAB))) < 0.5  # near-uniform at initialisation
    with pytest.raises(ValueError, match="exceeds block_size"):
        m(torch.zeros(1, 17, dtype=torch.long))


def test_tokenizer_errors_name_the_character() -> None:
    tok = CharTokenizer.from_text("hello\nworld")
    assert tok.decode(tok.encode("low\n")) == "low\n"
    with pytest.raises(GenloomError, match=r"'Z' \(U\+005A, line 2\)"):
        tok.encode("hello\nZebra")
    assert CharTokenizer.from_json(tok.to_json()).chars == tok.chars
    m = tiny()
    with pytest.raises(GenloomError, match="'€'"):
        m.encode("ab€")


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="divisible"):
        LMConfig(n_embd=10, n_head=3)
    with pytest.raises(ValueError, match="pos"):
        LMConfig(pos="alibi")
    with pytest.raises(ValueError, match="vocabulary has"):
        TransformerLM(LMConfig(vocab_size=5), VOCAB)


def test_export_round_trip(tmp_path) -> None:
    m = tiny(pos="rope", mlp="swiglu")
    path = export.save(m, tmp_path / "lm.safetensors", provenance={"dataset": "x"})
    h = export.read_header(path)
    assert h.kind == "lm" and json.loads(h.metadata["genloom.vocab"]) == VOCAB
    assert "lm_head.weight" not in h.tensors  # tied: stored once
    m2 = export.load(path)
    assert isinstance(m2, model_class("lm"))
    assert m2.lm_head.weight is m2.wte.weight
    x = torch.randint(len(VOCAB), (2, 12))
    assert torch.equal(m(x), m2(x))
    assert m2.vocab == VOCAB and m2.decode(m2.encode("bad\n")) == "bad\n"


def test_bf16_autocast_training_step_runs() -> None:
    m = tiny().train()
    m.autocast_dtype = torch.bfloat16
    x = torch.randint(len(VOCAB), (4, 16))
    out = m.loss((x, x))
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    assert m.wte.weight.grad is not None and m.wte.weight.grad.dtype == torch.float32
