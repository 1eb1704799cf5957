"""Poison messages: which message killed the worker process, and keeping its neighbours out of harm's way.

A message whose processing kills the worker process (a segfault in a kernel, the OOM killer) comes back with
every message the dead process held: on a quorum queue each of them has its delivery count raised. Left alone,
the innocent ones would reach the delivery limit together with the poison. So:

- **Suspects run alone.** A redelivered message (delivery count ≥ 1) is processed in a batch of its own, one at
  a time (``SuspectLane``), beside the normal batches.
- **The supervisor learns the culprit.** Before each forward pass the worker writes the keys of the batch's
  messages into memory shared with the supervisor (``CrashLog``) and clears them after. If the process dies
  while a single suspect is running, that message is the culprit: the supervisor tells the next worker process.
- **Culprits go last, and are dead-lettered with an answer.** A known culprit waits until no other suspect is
  waiting, so the messages redelivered with it are acked before it runs again; on its last allowed delivery the
  worker copies it to the dead-letter queue, answers its client (``code: "redelivered"``) and acks it, instead
  of letting it kill one more process. A message that dies on its last delivery without being identified is
  dead-lettered by the broker (``x-delivery-limit``), with no answer to the client.

``GENLOOM_CHAOS_KILL_ID_PREFIX=PREFIX`` (testing only): the worker process SIGKILLs itself when it starts a
forward pass over a request whose id starts with PREFIX — a real poison message for the tests and for drills.
"""
from __future__ import annotations

import asyncio
import hashlib
import heapq
import itertools
import os
import signal
from typing import Any, Awaitable, Callable

CRASH_LOG_BYTES = 8192
CHAOS_ENV = "GENLOOM_CHAOS_KILL_ID_PREFIX"
SETTLE_S = 0.25  # a culprit runs only after this long without another redelivered message arriving


def message_key(message_id: str | None, correlation_id: str | None, body: bytes) -> str:
    """A stable name for a message across redeliveries: its message id, else a hash of body and correlation."""
    if message_id:
        return message_id[:120]
    return hashlib.sha1(body + b"\0" + (correlation_id or "").encode()).hexdigest()


class CrashLog:
    """Keys of the batch now in a forward pass, in shared memory the supervisor reads after a crash."""

    def __init__(self, buffer: Any | None) -> None:
        self.buffer = buffer  # multiprocessing.Array('c', CRASH_LOG_BYTES) from the supervisor, or None

    @staticmethod
    def create(ctx: Any) -> Any:
        return ctx.Array("c", CRASH_LOG_BYTES, lock=False)

    def record(self, keys: list[str]) -> None:
        if self.buffer is None:
            return
        raw = "\n".join(keys).encode()
        if len(raw) >= CRASH_LOG_BYTES:
            raw = b""  # too many to name: no culprit can be singled out from this batch anyway
        self.buffer[:len(raw) + 1] = raw + b"\0"

    def clear(self) -> None:
        if self.buffer is not None:
            self.buffer[0] = b"\0"

    @staticmethod
    def read(buffer: Any) -> list[str]:
        raw = bytes(buffer[:]).split(b"\0", 1)[0]
        return raw.decode(errors="replace").split("\n") if raw else []


def chaos_check(request_ids: list[str]) -> None:
    """Testing hook (module docstring): die like a segfault when a request id starts with the prefix."""
    prefix = os.environ.get(CHAOS_ENV)
    if prefix and any(rid.startswith(prefix) for rid in request_ids):
        os.kill(os.getpid(), signal.SIGKILL)


class SuspectLane:
    """Redelivered messages, processed one at a time, each alone: fewest deliveries first, known culprits last."""

    def __init__(self, handle: Callable[[list[Any]], Awaitable[None]], *, culprits: frozenset[str]) -> None:
        self.handle, self.culprits = handle, culprits
        self._heap: list[tuple[int, int, int, Any]] = []
        self._order = itertools.count()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.busy = False

    def put(self, item: Any, *, count: int, key: str) -> None:
        heapq.heappush(self._heap, (1 if key in self.culprits else 0, count, next(self._order), item))
        self._wakeup.set()

    def __len__(self) -> int:
        return len(self._heap) + (1 if self.busy else 0)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            while not self._heap:
                self._wakeup.clear()
                await self._wakeup.wait()
            if self._heap[0][0]:  # a culprit: let the messages redelivered with it arrive (and go first)
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), SETTLE_S)
                    continue
                except asyncio.TimeoutError:
                    pass
            *_, item = heapq.heappop(self._heap)
            self.busy = True
            try:
                await self.handle([item])
            except Exception:
                pass
            finally:
                self.busy = False

    async def drain(self) -> None:
        while self._heap or self.busy:
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
