"""Flow control of the queue worker: which deliveries may be acked (``AckWindow``) and when a batch is formed
(``Batcher``). Both run on the event loop; neither does I/O of its own beyond sending acks."""
from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any, Awaitable, Callable

import aiormq

from genloom.queue import amqp

log = logging.getLogger("genloom.queue.worker")


class AckWindow:
    """The delivery tags of one channel, in delivery order; acks finished ones in as few frames as is safe.

    ``finish(tag)`` marks a message done; on the next loop iteration the longest prefix of done messages is acked
    with one ``basic.ack(multiple=True)`` of its last tag, so a multiple ack never covers a message still in
    flight (every delivered message ends in ``finish`` — this worker never nacks — or stays unacked until its
    channel dies and the broker requeues it). Done messages behind one still in flight (a slow retry publish)
    are acked one by one after ``straggler_s``, so they do not wait for it. A tag is acked exactly once.
    """

    def __init__(self, channel: aiormq.abc.AbstractChannel, *, straggler_s: float = 0.2) -> None:
        self.channel = channel
        self.order: collections.deque[int] = collections.deque()  # delivered, not yet acked
        self.done: set[int] = set()
        self.straggler_s = straggler_s
        self._scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def delivered(self, tag: int) -> None:
        self.order.append(tag)

    def finish(self, tag: int) -> None:
        self.done.add(tag)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        self._ack_prefix()
        if self.done and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.straggler_s, self._stragglers)

    def _ack_prefix(self) -> None:
        last = None
        order, done = self.order, self.done
        while order and order[0] in done:
            last = order.popleft()
            done.discard(last)
        if last is not None:
            self._send(last, multiple=True)

    def _stragglers(self) -> None:
        self._timer = None
        self._ack_prefix()
        for tag in sorted(self.done):  # still behind an unfinished message: ack each on its own
            self.order.remove(tag)
            self._send(tag, multiple=False)
        self.done.clear()

    def _send(self, tag: int, *, multiple: bool) -> None:
        amqp.ack(self.channel, tag, multiple=multiple, tasks=self._tasks)

    async def close(self) -> None:
        """Ack everything finished now (graceful stop), and wait until those acks are written."""
        if self._timer is not None:
            self._timer.cancel()
        self._stragglers()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


class Batcher:
    """Up to ``size`` items, or ``timeout`` seconds after the oldest arrived; ``concurrency`` batches in flight.
    Urgent items (``put(item, urgent=True)``) go into the next batch ahead of every normal item waiting."""

    def __init__(self, handle: Callable[[list[Any]], Awaitable[None]], *, size: int, timeout: float,
                 concurrency: int) -> None:
        self.handle, self.size, self.timeout = handle, size, timeout
        self.items: collections.deque[Any] = collections.deque()
        self.urgent: collections.deque[Any] = collections.deque()
        self.nonempty, self.full = asyncio.Event(), asyncio.Event()
        self.slots = asyncio.Semaphore(concurrency)
        self.tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._loop())

    def put(self, item: Any, *, urgent: bool = False) -> None:
        (self.urgent if urgent else self.items).append(item)
        self.nonempty.set()
        if len(self.items) + len(self.urgent) >= self.size:
            self.full.set()

    async def _loop(self) -> None:
        while True:
            await self.slots.acquire()
            await self.nonempty.wait()
            oldest = self.urgent[0] if self.urgent else self.items[0]
            remaining = oldest.t0 + self.timeout - time.monotonic()
            if len(self.items) + len(self.urgent) < self.size and remaining > 0:
                try:
                    await asyncio.wait_for(self.full.wait(), remaining)
                except asyncio.TimeoutError:
                    pass
            batch = [self.urgent.popleft() for _ in range(min(self.size, len(self.urgent)))]
            batch += [self.items.popleft() for _ in range(min(self.size - len(batch), len(self.items)))]
            if not self.items and not self.urgent:
                self.nonempty.clear()
            if len(self.items) + len(self.urgent) < self.size:
                self.full.clear()
            task = asyncio.create_task(self._run(batch))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _run(self, batch: list[Any]) -> None:
        try:
            await self.handle(batch)
        except Exception:  # never lose the loop; the messages stay unacked and come back
            log.exception("batch handler failed")
        finally:
            self.slots.release()

    async def drain(self) -> None:
        while self.items or self.urgent or self.tasks:
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._loop_task:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
