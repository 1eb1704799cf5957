"""Dynamic batching: a bounded per-model queue, drained in batches of up to ``max_batch_size`` items.

The shape of Ray's ``_BatchQueue`` (one future per request, an event plus ``wait_for`` with the remaining
time) with what it lacks: a bound on the queue that refuses work at once (``Overloaded`` → HTTP 503 +
Retry-After), per-request deadlines (``DeadlineExceeded`` → 504) whose expired or cancelled entries are dropped
before they reach the model, and an admission estimate that refuses a request that could not finish before its
deadline anyway. The batcher knows nothing about HTTP, AMQP or processes: ``run_batch(entries) -> results`` does
the work, so it is tested on its own (tests/test_core_batcher.py). ``genloom serve`` runs one batch at a time per
model (its worker process computes one at a time); ``genloom worker`` lets ``concurrency`` batches be in flight
(one computes while the replies of the previous one are published), with no deadline (``math.inf``) and a
queue bound equal to its prefetch.
"""
from __future__ import annotations

import asyncio
import collections
import math
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable


class Overloaded(Exception):
    """The queue is full, or the wait would outlast the deadline: answer 503 with ``retry_after`` seconds."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DeadlineExceeded(Exception):
    """The request's deadline passed before its result was ready (HTTP 504)."""


@dataclass(eq=False)
class Entry:
    """One queued request. ``size`` counts towards max_batch_size (images for /sample, 1 otherwise)."""

    item: dict[str, Any]
    size: int
    deadline: float  # time.monotonic() seconds
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)
    arrays: list[Any] = field(default_factory=list)
    started: float | None = None  # when its batch went to the worker
    request_id: str | None = None  # for logs and traces
    urgent: bool = False  # queued ahead of every non-urgent entry (AMQP priority lane)

    def cancel(self) -> None:
        """The client went away or gave up: drop it from the queue, discard its result."""
        if not self.future.done():
            self.future.cancel()


RunBatch = Callable[[list[Entry]], Awaitable[list[Any]]]


class Batcher:
    def __init__(self, run_batch: RunBatch, *, max_batch_size: int, max_wait_ms: float, max_queue: int,
                 concurrency: int = 1, on_batch: Callable[[list[Entry], float], None] | None = None) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_wait_ms < 0 or concurrency < 1:
            raise ValueError("max_batch_size, max_queue and concurrency must be ≥ 1, max_wait_ms ≥ 0")
        self.concurrency = concurrency
        self._slots = asyncio.Semaphore(concurrency)  # batches in flight
        self._running: set[asyncio.Task[None]] = set()
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.on_batch = on_batch  # metrics hook: (entries, seconds)
        self._queue: collections.deque[Entry] = collections.deque()
        self._queued_size = 0
        self._urgent = 0  # urgent entries at the head of the queue
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._batch_seconds = 0.0  # EMA of one batch cycle while busy, for the admission estimate
        self._last_end: float | None = None  # when the previous batch finished, if work was waiting then
        self.in_flight = 0

    # -- lifecycle ----------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")

    async def stop(self) -> None:
        """Stop taking batches; entries still queued fail with Overloaded (the server is going away)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for t in list(self._running):
            t.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
        while self._queue:
            e = self._queue.popleft()
            if not e.future.done():
                e.future.set_exception(Overloaded("the server is shutting down", retry_after=1.0))
        self._queued_size = self._urgent = 0

    @property
    def depth(self) -> int:
        return len(self._queue)

    async def drain(self, poll_s: float = 0.01) -> None:
        """Wait until every queued entry has been run (graceful stop: call before ``stop``)."""
        while self._queue or self.in_flight or self._running:
            await asyncio.sleep(poll_s)

    # -- submission -----------------------------------------------------------------------------------------
    def estimated_wait(self, size: int = 1) -> float:
        """Seconds until a new entry of ``size`` would finish: the batches ahead of it plus its own.

        wait ≈ (⌈queued / max_batch⌉ + in_flight + 1) · EMA(batch cycle), plus max_wait when its batch would
        not be full (a partial batch waits out the collection window). The cycle is measured from one batch's
        start to the next while work was waiting, so it includes the time the event loop spends on HTTP.
        """
        batches_ahead = math.ceil(self._queued_size / self.max_batch_size) + (1 if self.in_flight else 0)
        partial = (self._queued_size + size) % self.max_batch_size != 0
        return (batches_ahead + 1) * self._batch_seconds + (self.max_wait if partial else 0.0)

    def submit(self, item: Any, *, size: int = 1, deadline: float, arrays: list[Any] | None = None,
               request_id: str | None = None, urgent: bool = False) -> Entry:
        """Queue one request, or raise Overloaded at once. Await ``entry.future`` for the result.
        ``urgent``: it goes into the next batch ahead of every non-urgent entry waiting (FIFO among urgent ones)."""
        if len(self._queue) >= self.max_queue:
            raise Overloaded(f"queue full ({self.max_queue} requests waiting)",
                             retry_after=max(1.0, self.estimated_wait()))
        now = time.monotonic()
        wait = self.estimated_wait(size)
        if now + wait > deadline:
            raise Overloaded(f"estimated wait {wait:.2f}s exceeds the request deadline "
                             f"({deadline - now:.2f}s left)", retry_after=max(1.0, wait))
        entry = Entry(item, size, deadline, asyncio.get_running_loop().create_future(), now, arrays or [],
                      request_id=request_id, urgent=urgent)
        if urgent:
            self._queue.insert(self._urgent, entry)
            self._urgent += 1
        else:
            self._queue.append(entry)
        self._queued_size += size
        self._wakeup.set()
        return entry

    # -- the loop -------------------------------------------------------------------------------------------
    async def _loop(self) -> None:
        while True:
            await self._slots.acquire()  # all batches in flight: the queue grows into the next, larger batch
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            # wait until the batch is full or max_wait has passed since its first entry was queued
            first = self._queue[0].enqueued
            while self._queued_size < self.max_batch_size:
                left = first + self.max_wait - time.monotonic()
                if left <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), left)
                except TimeoutError:
                    break
            batch = self._take()
            if not batch:
                self._slots.release()
            elif self.concurrency == 1:
                try:
                    await self._run(batch)
                finally:
                    self._slots.release()
            else:
                task = asyncio.get_running_loop().create_task(self._run_then_release(batch))
                self._running.add(task)
                task.add_done_callback(self._running.discard)

    async def _run_then_release(self, batch: list[Entry]) -> None:
        try:
            await self._run(batch)
        finally:
            self._slots.release()

    def _take(self) -> list[Entry]:
        """Pop up to max_batch_size items; drop cancelled entries and fail expired ones with 504."""
        batch: list[Entry] = []
        size = 0
        now = time.monotonic()
        while self._queue:
            e = self._queue[0]
            if e.future.done():  # cancelled by its client
                self._pop()
                continue
            if e.deadline <= now:
                self._pop()
                e.future.set_exception(DeadlineExceeded("deadline passed while queued"))
                continue
            if batch and size + e.size > self.max_batch_size:
                break
            self._pop()
            batch.append(e)
            size += e.size
        return batch

    def _pop(self) -> Entry:
        e = self._queue.popleft()
        self._queued_size -= e.size
        if e.urgent:
            self._urgent -= 1
        return e

    async def _run(self, batch: list[Entry]) -> None:
        t0 = time.monotonic()
        for e in batch:
            e.started = t0
        self.in_flight += len(batch)
        try:
            results = await self.run_batch(batch)
            if len(results) != len(batch):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} requests")
        except asyncio.CancelledError:
            for e in batch:
                if not e.future.done():
                    e.future.set_exception(Overloaded("the server is shutting down", retry_after=1.0))
            raise
        except Exception as err:  # a failed batch fails every request in it, with the error (never a hang)
            for e in batch:
                if not e.future.done():
                    e.future.set_exception(err)
        else:
            for e, r in zip(batch, results):
                if not e.future.done():
                    if isinstance(r, BaseException):
                        e.future.set_exception(r)
                    else:
                        e.future.set_result(r)
        finally:
            self.in_flight -= len(batch)
        t1 = time.monotonic()
        dt = t1 - t0
        # busy (work waited since the last batch ended): the cycle is end to end, so it includes the time the
        # event loop spent answering and parsing HTTP between batches; idle: just this batch's duration
        cycle = t1 - self._last_end if self._last_end is not None else dt
        self._last_end = t1 if self._queue else None
        # EMA with α = 0.2: smooth enough to ignore one slow batch, quick to follow a load change
        self._batch_seconds = cycle if self._batch_seconds == 0 else 0.8 * self._batch_seconds + 0.2 * cycle
        if self.on_batch is not None:
            self.on_batch(batch, dt)
