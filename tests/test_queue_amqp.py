"""genloom.queue.amqp and the worker's ack window: batched confirmed publishes, multiple acks, reconnects."""
from __future__ import annotations

import asyncio
from typing import Any

import pamqp.frame
import pytest
from pamqp import commands as spec

from genloom.queue import amqp
from genloom.queue.flow import AckWindow as _AckWindow
from queue_helpers import close_connections_named, delete_queues, leaked_queues, require_broker, unique_queue

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


class _Channel:
    """What AckWindow / amqp.ack use of an aiormq channel; records the ack frames."""

    def __init__(self) -> None:
        self.is_closed = False
        self.number = 1
        self.write_queue: asyncio.Queue[Any] = asyncio.Queue()

    def acks(self) -> list[tuple[int, bool]]:
        out = []
        while not self.write_queue.empty():
            data = self.write_queue.get_nowait().payload
            while data:
                n, _, frame = pamqp.frame.unmarshal(data)
                assert isinstance(frame, spec.Basic.Ack)
                out.append((frame.delivery_tag, frame.multiple))
                data = data[n:]
        return out


async def test_ack_window_acks_only_the_contiguous_finished_prefix() -> None:
    ch = _Channel()
    w = _AckWindow(ch, straggler_s=0.05)  # type: ignore[arg-type]
    for tag in range(1, 8):
        w.delivered(tag)
    for tag in (1, 2, 3, 5, 6):  # 4 is still in flight
        w.finish(tag)
    await asyncio.sleep(0)
    assert ch.acks() == [(3, True)]  # never covers 4
    await asyncio.sleep(0.1)  # 5 and 6 waited behind 4 long enough: acked on their own
    assert ch.acks() == [(5, False), (6, False)]
    w.finish(4)
    w.finish(7)
    await asyncio.sleep(0)
    assert ch.acks() == [(7, True)]  # 4 and 7 (5, 6 are acked already; a multiple ack skips them)
    assert not w.order and not w.done


async def test_ack_window_close_acks_every_finished_message_once() -> None:
    ch = _Channel()
    w = _AckWindow(ch, straggler_s=10)  # type: ignore[arg-type]
    for tag in range(1, 5):
        w.delivered(tag)
    w.finish(1)
    w.finish(3)
    await w.close()  # graceful stop: 2 and 4 are not finished, so they are not acked
    assert ch.acks() == [(1, True), (3, False)]
    ch.is_closed = True
    w.finish(2)
    await asyncio.sleep(0)
    assert ch.acks() == []  # a dead channel: the broker requeued it, nothing to ack


async def test_publish_batch_confirms_returns_and_rejects_on_close() -> None:
    import aio_pika

    url = require_broker()
    name = unique_queue("amqp")
    conn = await amqp.connect_robust(url, name=name)
    try:
        ch = await conn.channel(publisher_confirms=True, on_return_raises=True)
        queue = await ch.declare_queue(name, durable=False, auto_delete=True)
        raw = await ch.get_underlay_channel()
        futs = await amqp.publish_batch(raw, [amqp.Outgoing(name, f"m{i}".encode(), correlation_id=str(i))
                                              for i in range(50)]
                                        + [amqp.Outgoing(f"no-such-queue-{name}", b"x")])
        done = await asyncio.gather(*futs, return_exceptions=True)
        assert all(isinstance(r, spec.Basic.Ack) for r in done[:50])
        assert type(done[50]).__name__ == "PublishError"  # mandatory + no queue: returned
        got = [await queue.get(timeout=5) for _ in range(50)]
        assert [m.body for m in got] == [f"m{i}".encode() for i in range(50)]  # in order, intact
        assert all(m.delivery_mode == aio_pika.DeliveryMode.PERSISTENT for m in got)
        assert raw.message_id_delivery_tag == {}  # forgotten once confirmed
        # futures still unconfirmed when the channel dies are rejected, not left hanging
        futs = await amqp.publish_batch(raw, [amqp.Outgoing(name, b"late") for _ in range(20)])
        await raw.close()
        results = await asyncio.wait_for(asyncio.gather(*futs, return_exceptions=True), 10)
        assert all(isinstance(r, (spec.Basic.Ack, Exception)) for r in results)
        with pytest.raises(Exception):
            await amqp.publish_batch(raw, [amqp.Outgoing(name, b"closed")])
    finally:
        await conn.close()
        await asyncio.to_thread(delete_queues, [name])  # auto_delete never fires: nothing consumed from it


async def test_client_survives_its_connection_dropping(tmp_path: Any) -> None:
    """The client's raw reply consumer comes back after a reconnect; publishes lost with it are republished."""
    from genloom.queue import admin
    from genloom.queue.client import QueueClient
    from genloom.queue.worker import QueueWorker, WorkerConfig
    from queue_helpers import tiny_vae, unique_model

    url = require_broker()
    name = unique_model()
    worker = QueueWorker(WorkerConfig(url=url, models={name: str(tiny_vae(tmp_path / "v.safetensors"))},
                                      name=f"w-{name}", prefetch=50))
    await worker.start()
    try:
        async with QueueClient(url, timeout=40, name=f"c-{name}") as client:
            first = await client.run_many(name, ({"n": 1} for _ in range(100)))
            assert all(not isinstance(r, Exception) and r.ok for r in first)
            task = asyncio.ensure_future(client.run_many(name, ({"n": 1} for _ in range(2000)), max_in_flight=500))
            while client.answered < 400:
                await asyncio.sleep(0.02)
            assert await asyncio.to_thread(close_connections_named, f"c-{name}") == 1
            results = await asyncio.wait_for(task, 40)
            assert all(not isinstance(r, Exception) and r.ok for r in results), \
                [r for r in results if isinstance(r, Exception)][:3]
            assert len({r.id for r in results}) == 2000  # type: ignore[union-attr]
            assert client.answered == 2100
    finally:
        await worker.stop()
        await admin.delete_model_queues(url, name)


async def test_session_leak_check_sees_a_tagged_queue() -> None:
    """The session-end check in conftest.py (``leaked_queues``) finds a queue this run left, and not once it
    is deleted."""
    url = require_broker()
    name = unique_queue("leak")
    conn = await amqp.connect_robust(url, name=name)
    try:
        ch = await conn.channel()
        await ch.declare_queue(name, durable=False)
        assert name in await asyncio.to_thread(leaked_queues)
    finally:
        await conn.close()
        await asyncio.to_thread(delete_queues, [name])
    assert name not in await asyncio.to_thread(leaked_queues)
