"""KV-cache generation: exact agreement with full recomputation, batching, sampling options, streaming."""
from __future__ import annotations

import pytest
import torch

from genloom.errors import GenloomError
from genloom.models.lm_generate import DecodeBatch, generate, generate_uncached, sample_rows, stream
from genloom.models.transformer import LMConfig, TransformerLM

VOCAB = sorted(set("abcdefghlo \n"))


def model(pos: str = "learned", block: int = 16) -> TransformerLM:
    torch.manual_seed(1)
    cfg = LMConfig(vocab_size=len(VOCAB), block_size=block, n_layer=2, n_head=2, n_embd=16, pos=pos)
    m = TransformerLM(cfg, VOCAB).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.4)  # a random but confident model: distinct logits, varied greedy output
    return m


def run_slot(b: DecodeBatch, slot: int) -> list[int]:
    got = []
    while not b.is_done(slot):
        got += [t for s, t in b.step() if s == slot]
    return got


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_greedy_with_and_without_cache_identical(pos: str) -> None:
    m = model(pos, block=32)
    for prompt in ["a", "hello", "bad cafe"]:
        ids = m.encode(prompt)
        b = DecodeBatch(m, slots=1)
        s = b.add(ids, max_new_tokens=12, temperature=0)
        assert run_slot(b, s) == generate_uncached(m, ids, max_new_tokens=12)  # within block_size


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_greedy_identical_beyond_block_size_with_sliding_window(pos: str) -> None:
    m = model(pos, block=8)
    ids = m.encode("cab bad fed")  # 11 > block_size 8: the prompt is cut to the window
    b = DecodeBatch(m, slots=1)
    s = b.add(ids, max_new_tokens=40, temperature=0)
    assert run_slot(b, s) == generate_uncached(m, ids, max_new_tokens=40, window="slide")


def test_batched_prompts_of_different_lengths_match_single() -> None:
    m = model()
    prompts = ["a", "hello", "", "fed cab"]
    singles = [generate(m, [p], max_new_tokens=10, temperature=0)[0] for p in prompts]
    assert generate(m, prompts, max_new_tokens=10, temperature=0) == singles
    # continuous batching: 2 slots for 4 prompts, rows are reused as requests finish
    assert generate(m, prompts, max_new_tokens=10, temperature=0, slots=2) == singles


def test_requests_join_and_leave_between_steps() -> None:
    m = model(block=32)
    b = DecodeBatch(m, slots=3)
    a = b.add(m.encode("abc"), max_new_tokens=20, temperature=0)
    first = [t for _, t in b.step()]
    c = b.add(m.encode("h"), max_new_tokens=5, temperature=0)  # joins mid-flight
    out = b.step()
    assert [s for s, _ in out] == [a, c]  # one token per active slot per step
    rest = run_slot(b, a)
    assert first + [out[0][1]] + rest == generate_uncached(m, m.encode("abc"), max_new_tokens=20)
    assert b.is_done(c) and len(b.tokens(c)) == 5
    b.remove(c)
    assert b.active == [a]
    with pytest.raises(KeyError):
        b.is_done(c)


def test_seeded_sampling_is_reproducible_and_independent_of_the_batch() -> None:
    m = model()
    kw = dict(max_new_tokens=15, temperature=1.0, top_k=5, seed=7)
    one = generate(m, ["ab"], **kw)
    assert generate(m, ["ab"], **kw) == one
    b = DecodeBatch(m, slots=2)
    b.add(m.encode("hello"), max_new_tokens=15, temperature=1.0, seed=3)  # another request beside it
    s = b.add(m.encode("ab"), max_new_tokens=15, temperature=1.0, top_k=5, seed=7)
    assert m.decode(run_slot(b, s)) == one[0]
    assert generate(m, ["ab"], max_new_tokens=15, temperature=1.0, seed=8) != one


def test_top_k_and_top_p_restrict_the_choice() -> None:
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]]).repeat(200, 1)
    u = torch.rand(200, generator=torch.Generator().manual_seed(0))
    ones = torch.ones(200)
    k2 = sample_rows(logits, temperature=ones, top_k=torch.full((200,), 2), top_p=ones, u=u)
    assert set(k2.tolist()) == {0, 1}
    # softmax([4,3,2,1,0]) ≈ [.64, .24, .09, .03, .01]: top_p 0.7 keeps tokens 0 and 1 (0.64 < 0.7)
    p7 = sample_rows(logits, temperature=ones, top_k=torch.full((200,), 5), top_p=torch.full((200,), 0.7), u=u)
    assert set(p7.tolist()) == {0, 1}
    p5 = sample_rows(logits, temperature=ones, top_k=torch.full((200,), 5), top_p=torch.full((200,), 0.5), u=u)
    assert set(p5.tolist()) == {0}
    g = sample_rows(logits, temperature=torch.zeros(200), top_k=torch.full((200,), 5), top_p=ones, u=u)
    assert set(g.tolist()) == {0}
    full = sample_rows(logits, temperature=ones, top_k=torch.full((200,), 5), top_p=ones, u=u)
    assert len(set(full.tolist())) >= 3


def test_stop_strings_and_streaming() -> None:
    m = model()
    free = generate(m, ["ab"], max_new_tokens=30, temperature=0)[0]
    stop = free[5:7]  # a string the greedy continuation is known to produce
    cut = generate(m, ["ab"], max_new_tokens=30, temperature=0, stop=[stop])[0]
    assert cut == free[:free.index(stop)] and stop not in cut
    pieces = list(stream(m, "ab", max_new_tokens=30, temperature=0, stop=[stop]))
    assert "".join(pieces) == cut
    pieces = list(stream(m, "ab", max_new_tokens=30, temperature=0))
    assert len(pieces) >= 20 and "".join(pieces) == free  # one piece per token when no stop is pending


def test_bad_requests_are_named() -> None:
    m = model()
    b = DecodeBatch(m, slots=1)
    with pytest.raises(GenloomError, match="temperature"):
        b.add([0], max_new_tokens=3, temperature=-1)
    with pytest.raises(GenloomError, match="top_p"):
        b.add([0], max_new_tokens=3, top_p=1.5)
    with pytest.raises(GenloomError, match="out of range"):
        b.add([99], max_new_tokens=3)
    b.add([0], max_new_tokens=3)
    with pytest.raises(GenloomError, match="slots are busy"):
        b.add([0], max_new_tokens=3)
    with pytest.raises(GenloomError, match="'Z'"):
        generate(m, ["aZ"], max_new_tokens=3)
    assert generate(m, ["a"], max_new_tokens=0) == [""]
