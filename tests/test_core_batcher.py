"""The batcher on its own: no server, no processes — a fake run_batch that records what it was given."""
from __future__ import annotations

import asyncio
import time

import pytest

from genloom.core.batcher import Batcher, DeadlineExceeded, Entry, Overloaded

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]


class Recorder:
    def __init__(self, delay: float = 0.0, fail: Exception | None = None) -> None:
        self.batches: list[list[dict]] = []
        self.delay, self.fail = delay, fail
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(self, entries: list[Entry]) -> list:
        self.batches.append([e.item for e in entries])
        await self.release.wait()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        return [e.item["x"] * 10 for e in entries]


def later(s: float = 5.0) -> float:
    return time.monotonic() + s


async def test_collects_concurrent_requests_into_one_batch_and_splits_results() -> None:
    rec = Recorder()
    b = Batcher(rec, max_batch_size=8, max_wait_ms=50, max_queue=100)
    b.start()
    entries = [b.submit({"x": i}, deadline=later()) for i in range(5)]
    results = await asyncio.gather(*(e.future for e in entries))
    assert results == [0, 10, 20, 30, 40]
    assert rec.batches == [[{"x": i} for i in range(5)]]  # one forward pass, in arrival order
    await b.stop()


async def test_full_batch_goes_without_waiting_and_respects_max_batch_size() -> None:
    rec = Recorder()
    b = Batcher(rec, max_batch_size=4, max_wait_ms=3_000, max_queue=100)  # the wait would be 3 s
    b.start()
    t0 = time.monotonic()
    entries = [b.submit({"x": i}, deadline=later()) for i in range(8)]
    await asyncio.gather(*(e.future for e in entries))
    assert time.monotonic() - t0 < 2.0
    assert [len(x) for x in rec.batches] == [4, 4]
    await b.stop()


async def test_sizes_count_images_and_an_oversized_request_runs_alone() -> None:
    rec = Recorder()
    b = Batcher(rec, max_batch_size=10, max_wait_ms=20, max_queue=100)
    b.start()
    sizes = [6, 6, 25, 3]
    entries = [b.submit({"x": i}, size=s, deadline=later()) for i, s in enumerate(sizes)]
    await asyncio.gather(*(e.future for e in entries))
    assert [[it["x"] for it in batch] for batch in rec.batches] == [[0], [1], [2], [3]]
    await b.stop()


async def test_max_wait_bounds_the_latency_of_a_lone_request() -> None:
    rec = Recorder()
    b = Batcher(rec, max_batch_size=64, max_wait_ms=30, max_queue=100)
    b.start()
    t0 = time.monotonic()
    assert await b.submit({"x": 1}, deadline=later()).future == 10
    assert 0.025 <= time.monotonic() - t0 < 1.0
    await b.stop()


async def test_full_queue_refuses_at_once_with_retry_after() -> None:
    rec = Recorder()
    rec.release.clear()  # the worker is stuck: nothing drains
    b = Batcher(rec, max_batch_size=1, max_wait_ms=0, max_queue=3)
    b.start()
    first = b.submit({"x": 0}, deadline=later())
    await asyncio.sleep(0.05)  # first is now in flight
    queued = [b.submit({"x": i}, deadline=later()) for i in range(1, 4)]
    t0 = time.monotonic()
    with pytest.raises(Overloaded) as exc:
        b.submit({"x": 9}, deadline=later())
    assert time.monotonic() - t0 < 0.01 and exc.value.retry_after >= 1
    rec.release.set()
    assert await asyncio.gather(first.future, *(e.future for e in queued)) == [0, 10, 20, 30]
    await b.stop()


async def test_expired_and_cancelled_entries_never_reach_the_model() -> None:
    rec = Recorder()
    rec.release.clear()
    b = Batcher(rec, max_batch_size=1, max_wait_ms=0, max_queue=10)
    b.start()
    busy = b.submit({"x": 0}, deadline=later())
    await asyncio.sleep(0.05)
    expiring = b.submit({"x": 1}, deadline=time.monotonic() + 0.05)
    gone = b.submit({"x": 2}, deadline=later())
    kept = b.submit({"x": 3}, deadline=later())
    gone.cancel()  # the client disconnected
    await asyncio.sleep(0.1)
    rec.release.set()
    with pytest.raises(DeadlineExceeded):
        await expiring.future
    assert await busy.future == 0 and await kept.future == 30
    assert [x["x"] for batch in rec.batches for x in batch] == [0, 3]
    await b.stop()


async def test_admission_refuses_work_that_cannot_meet_its_deadline() -> None:
    rec = Recorder(delay=0.2)
    b = Batcher(rec, max_batch_size=1, max_wait_ms=0, max_queue=100)
    b.start()
    await b.submit({"x": 0}, deadline=later()).future  # teaches the batcher a batch takes ~0.2 s
    for i in range(5):
        b.submit({"x": i}, deadline=later())
    with pytest.raises(Overloaded, match="deadline"):
        b.submit({"x": 99}, deadline=time.monotonic() + 0.3)  # 5 batches ahead ≈ 1 s > 0.3 s
    await b.stop()


async def test_a_failed_batch_fails_every_request_with_the_error() -> None:
    b = Batcher(Recorder(fail=RuntimeError("boom")), max_batch_size=8, max_wait_ms=20, max_queue=10)
    b.start()
    entries = [b.submit({"x": i}, deadline=later()) for i in range(3)]
    for e in entries:
        with pytest.raises(RuntimeError, match="boom"):
            await e.future
    await b.stop()


async def test_per_item_exceptions_and_result_count_mismatch() -> None:
    async def run(entries: list[Entry]) -> list:
        return [ValueError("bad item") if e.item["x"] == 1 else e.item["x"] for e in entries]

    b = Batcher(run, max_batch_size=8, max_wait_ms=20, max_queue=10)
    b.start()
    e0, e1 = b.submit({"x": 0}, deadline=later()), b.submit({"x": 1}, deadline=later())
    assert await e0.future == 0
    with pytest.raises(ValueError, match="bad item"):
        await e1.future
    await b.stop()

    async def short(entries: list[Entry]) -> list:
        return []

    b = Batcher(short, max_batch_size=8, max_wait_ms=0, max_queue=10)
    b.start()
    with pytest.raises(RuntimeError, match="0 results for 1"):
        await b.submit({"x": 0}, deadline=later()).future
    await b.stop()


async def test_stop_fails_queued_entries_instead_of_leaving_them_hanging() -> None:
    rec = Recorder()
    rec.release.clear()
    b = Batcher(rec, max_batch_size=1, max_wait_ms=0, max_queue=10)
    b.start()
    entries = [b.submit({"x": i}, deadline=later()) for i in range(3)]
    await asyncio.sleep(0.05)
    await b.stop()
    for e in entries:
        with pytest.raises(Overloaded):
            await e.future


async def test_constructor_validates() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        Batcher(Recorder(), max_batch_size=0, max_wait_ms=1, max_queue=1)


async def test_urgent_entries_go_ahead_and_concurrent_batches_drain() -> None:
    rec = Recorder()
    rec.release.clear()  # the first batch holds until released
    b = Batcher(rec, max_batch_size=2, max_wait_ms=0, max_queue=100, concurrency=2)
    b.start()
    first = [b.submit({"x": i}, deadline=later()) for i in (0, 1)]
    await asyncio.sleep(0.05)  # batch [0, 1] is in flight
    rest = [b.submit({"x": 2}, deadline=later()), b.submit({"x": 3}, deadline=later()),
            b.submit({"x": 4}, deadline=later(), urgent=True), b.submit({"x": 5}, deadline=later(), urgent=True)]
    await asyncio.sleep(0.05)
    assert rec.batches[1] == [{"x": 4}, {"x": 5}]  # a second batch in flight (concurrency 2), urgent ones first
    rec.release.set()
    await b.drain()
    assert all(e.future.done() for e in first + rest) and b.depth == 0 and b.in_flight == 0
    assert rec.batches[2] == [{"x": 2}, {"x": 3}]
    await b.stop()
