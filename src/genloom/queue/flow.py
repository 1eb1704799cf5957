"""Flow control of the queue worker: which deliveries may be acked (``AckWindow``). Batches are formed by the one
batcher of every transport, ``core/batcher.py``. Runs on the event loop; no I/O of its own beyond sending acks."""
from __future__ import annotations

import asyncio
import collections
import logging

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
