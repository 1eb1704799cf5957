"""The operable worker pool against the real RabbitMQ: quorum queues and the delivery limit (a real poison message
that kills the worker process), urgent-queue priorities, queue depth metrics and `genloom queue status`, long LM
generations versus the consumer timeout (leases), migration from classic queues. Every test deletes its queues."""
from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import aio_pika
import aiormq
import httpx
import numpy as np
import pytest

from genloom.errors import GenloomError
from genloom.queue import admin
from genloom.queue import messages as m
from genloom.queue.client import QueueClient, Response
from genloom.queue.poison import CHAOS_ENV
from genloom.queue.topology import Topology, precondition_message, urgent_queue
from genloom.queue.worker import QueueWorker, WorkerConfig
from queue_helpers import free_port, require_broker, tiny_vae, unique_model
from test_queue_cli import GENLOOM, stop

pytestmark = pytest.mark.timeout(120)


def _metric(text: str, name: str, **labels: str) -> float | None:
    sel = ",".join(f'{k}="{v}"' for k, v in labels.items())
    found = re.search(rf"^{name}{{{re.escape(sel)}}} ([0-9.eE+-]+)$", text, re.M)
    return float(found.group(1)) if found else None


def test_a_poison_message_that_kills_the_worker_reaches_the_dead_letter_queue(tmp_path: Path) -> None:
    """A request whose forward pass SIGKILLs the worker process every time: with --delivery-limit 3 it is
    delivered 3 times (2 crashes), then dead-lettered with an error answer; the 20 requests that were in flight
    with it are all answered (they run alone after the first crash, before the known culprit)."""
    url = require_broker()
    model, path = unique_model(), tiny_vae(tmp_path / "vae.safetensors")
    env = {**os.environ, CHAOS_ENV: "poison-"}
    proc = subprocess.Popen([*GENLOOM, "worker", f"{model}={path}", "--amqp", url, "--delivery-limit", "3",
                             "--batch-size", "8", "--batch-timeout-ms", "20"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        asyncio.run(admin.wait_for_consumers(url, model, 1, timeout=90))

        async def run() -> list[Any]:
            async with QueueClient(url, timeout=60) as client:
                ids = [f"ok-{i}" for i in range(10)] + ["poison-1"] + [f"ok-{i}" for i in range(10, 20)]
                return await client.run_many(model, ({"n": 1, "seed": i} for i in range(21)), ids=ids)

        results = asyncio.run(run())
        dead = asyncio.run(admin.drain_dead_letters(url, model))
    finally:
        out = stop([proc])[0]
        asyncio.run(admin.delete_model_queues(url, model))
    by_id = {r.id: r for r in results if isinstance(r, Response)}
    assert len(by_id) == 21, results
    assert all(by_id[f"ok-{i}"].ok for i in range(20)), [r for r in results if not r.ok]
    poisoned = by_id["poison-1"]
    assert not poisoned.ok and poisoned.code == "redelivered" and "killed the worker process" in poisoned.error
    assert [d["body"]["id"] for d in dead] == ["poison-1"] and "poison message" in dead[0]["reason"]
    assert out.count("died (killed by signal 9)") == 2, out[-3000:]  # deliveries 1 and 2 crashed, 3 did not


async def _reject_until_dead(url: str, queue: str, limit: int) -> int:
    """Nack-with-requeue the message on ``queue`` until it disappears; returns how often it was delivered."""
    conn = await aio_pika.connect(url)
    try:
        ch = await conn.channel()
        q = await ch.declare_queue(queue, passive=True)
        deliveries = 0
        for _ in range(limit + 3):
            msg = await q.get(fail=False)
            if msg is None:
                await asyncio.sleep(0.2)
                if (msg := await q.get(fail=False)) is None:
                    break
            deliveries += 1
            await msg.nack(requeue=True)
        return deliveries
    finally:
        await conn.close()


@pytest.mark.asyncio
async def test_the_broker_dead_letters_after_the_delivery_limit_without_a_worker() -> None:
    """The queue arguments alone enforce the limit (the backstop when the worker cannot answer itself)."""
    url = require_broker()
    model = unique_model()
    conn = await aio_pika.connect(url)
    try:
        ch = await conn.channel()
        await Topology("quorum", 4).declare(ch, model)
        await ch.default_exchange.publish(aio_pika.Message(b'{"id": "x"}'), routing_key=m.queue_name(model))
        assert await _reject_until_dead(url, m.queue_name(model), 4) == 4
        dead = await ch.declare_queue(m.dead_letter_queue(model), passive=True)
        assert dead.declaration_result.message_count == 1
    finally:
        await conn.close()
        await admin.delete_model_queues(url, model)


@pytest.mark.asyncio
async def test_urgent_requests_overtake_a_backlog(tmp_path: Path) -> None:
    """5,000 normal requests queued, then 50 urgent ones: the urgent p99 latency is below the normal p10."""
    url = require_broker()
    model = unique_model()
    worker = QueueWorker(WorkerConfig(url=url, models={model: str(tiny_vae(tmp_path / "v.safetensors"))},
                                      batch_size=32, prefetch=256, depth_interval_s=0))
    await worker.start()
    runner = worker.runners[model]
    real_run = runner.run

    def paced(reqs: list[m.Request]) -> list[Any]:
        time.sleep(0.01)  # ~3,000 requests/s at most: the backlog lasts a couple of seconds on any machine
        return real_run(reqs)

    runner.run = paced  # type: ignore[method-assign]
    try:
        async with QueueClient(url, timeout=90) as client:
            low = asyncio.ensure_future(client.run_many(model, ({"n": 1} for _ in range(5000)), max_in_flight=5000))
            while client.answered < 200:  # the backlog is there and being worked off
                await asyncio.sleep(0.01)
            high = await client.run_many(model, ({"n": 1} for _ in range(50)), priority="high")
            lows = await asyncio.wait_for(low, 90)
    finally:
        await worker.stop()
        await admin.delete_model_queues(url, model)
    assert all(isinstance(r, Response) and r.ok for r in lows + high)
    lat_low = np.array([r.latency_s for r in lows])
    lat_high = np.array([r.latency_s for r in high])
    p99_high, p10_low = np.percentile(lat_high, 99), np.percentile(lat_low, 10)
    assert p99_high < p10_low, f"urgent p99 {p99_high:.3f} s ≥ normal p10 {p10_low:.3f} s"


@pytest.mark.asyncio
async def test_depth_metrics_and_queue_status(tmp_path: Path) -> None:
    """30 requests, a worker that holds 10 (prefetch) without finishing them: ready 20 and unacked 10 in the
    worker's metrics and in `genloom queue status --worker-metrics`."""
    from genloom.cli import main
    from genloom.queue.status import status

    url = require_broker()
    model, port = unique_model(), free_port()
    worker = QueueWorker(WorkerConfig(url=url, models={model: str(tiny_vae(tmp_path / "v.safetensors"))},
                                      prefetch=10, batch_size=4, concurrency=1, depth_interval_s=0.2,
                                      metrics_port=port))
    await worker.start()
    gate = threading.Event()
    runner = worker.runners[model]
    real_run = runner.run
    runner.run = lambda reqs: (gate.wait(30), real_run(reqs))[1]  # type: ignore[method-assign]
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    try:
        async with QueueClient(url, timeout=60) as client:
            task = asyncio.ensure_future(client.run_many(model, ({"n": 1} for _ in range(30))))
            q = m.queue_name(model)
            async with httpx.AsyncClient() as http:
                for _ in range(150):
                    text = (await http.get(metrics_url)).text
                    if (_metric(text, "genloom_queue_messages_ready", queue=q) == 20
                            and _metric(text, "genloom_queue_messages_unacked", queue=q) == 10):
                        break
                    await asyncio.sleep(0.1)
            assert _metric(text, "genloom_queue_messages_ready", queue=q) == 20, text
            assert _metric(text, "genloom_queue_messages_unacked", queue=q) == 10
            assert _metric(text, "genloom_queue_consumers", queue=urgent_queue(model)) == 1
            rows = {r["queue"]: r for r in await status(url, [model], [metrics_url])}
            assert (rows[q]["ready"], rows[q]["unacked"], rows[q]["consumers"]) == (20, 10, 1)
            assert rows[m.dead_letter_queue(model)]["ready"] == 0
            code = await asyncio.to_thread(main, ["queue", "status", model, "--amqp", url,
                                                  "--worker-metrics", metrics_url])
            assert code == 0
            gate.set()
            assert all(r.ok for r in await asyncio.wait_for(task, 60))
    finally:
        gate.set()
        await worker.stop()
        await admin.delete_model_queues(url, model)


def test_queue_status_cli_output_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from genloom.cli import main

    url = require_broker()
    model = unique_model()
    assert main(["queue", "status", model, "--amqp", url]) != 0  # nothing declared: one-line error
    err = capsys.readouterr().err
    assert "genloom: error: no queues for" in err and len(err.strip().splitlines()) == 1

    async def declare() -> None:
        conn = await aio_pika.connect(url)
        ch = await conn.channel()
        await Topology().declare(ch, model)
        await ch.default_exchange.publish(aio_pika.Message(b"{}"), routing_key=urgent_queue(model))
        await conn.close()

    asyncio.run(declare())
    try:
        assert main(["queue", "status", model, "--amqp", url, "--json"]) == 0
        rows = {r["queue"]: r for r in json.loads(capsys.readouterr().out)["queues"]}
        assert rows[urgent_queue(model)]["ready"] == 1 and rows[m.queue_name(model)]["ready"] == 0
        assert rows[urgent_queue(model)]["unacked"] is None  # unknown without --worker-metrics
    finally:
        asyncio.run(admin.delete_model_queues(url, model))


@pytest.mark.asyncio
async def test_a_long_lm_generation_outlives_its_lease(tmp_path: Path) -> None:
    """--lease-s 0.1: a 3,000-token generation is checkpointed into several segments, none of which holds a
    delivery longer than the lease; the answer has every token, and its start is what the engine gives. (The
    lease is short because a fast CPU makes the 3,000 tokens of this tiny model in under 0.5 s.)"""
    from genloom.export import load, save
    from genloom.models.lm_generate import generate
    from genloom.models.transformer import LMConfig, TransformerLM

    url = require_broker()
    vocab = list("abcdefgh \n")
    path = save(TransformerLM(LMConfig(vocab_size=len(vocab), block_size=16, n_layer=1, n_head=2, n_embd=16),
                              vocab=vocab), tmp_path / "lm.safetensors")
    model = unique_model()
    worker = QueueWorker(WorkerConfig(url=url, models={model: str(path)}, lease_s=0.1, depth_interval_s=0))
    await worker.start()
    try:
        async with QueueClient(url, timeout=90) as client:
            r = await client.request(model, {"prompt": "abc", "max_new_tokens": 3000, "seed": 7, "temperature": 1.0},
                                     op="generate")
        renewals = worker.metrics.lease_renewals.labels(model)._value.get()
        latency = worker.metrics.latency.labels(model)
    finally:
        await worker.stop()
        await admin.delete_model_queues(url, model)
    assert r.ok, r.error
    assert len(r.result["text"]) == 3000 and set(r.result["text"]) <= set(vocab)
    reference = generate(load(path), ["abc"], max_new_tokens=30, temperature=1.0, seed=7)[0]
    assert r.result["text"].startswith(reference)  # the first segment is the engine's text for that seed
    assert renewals >= 2, f"only {renewals} continuation segments; the generation did not outlive its lease"
    # no delivery was held (delivery → ack) much longer than the lease
    assert latency._sum.get() / max(1.0, sum(b.get() for b in latency._buckets)) < 1.5


@pytest.mark.asyncio
async def test_a_classic_queue_from_an_older_version_is_named_with_the_fix(tmp_path: Path) -> None:
    url = require_broker()
    model = unique_model()
    conn = await aio_pika.connect(url)
    try:
        ch = await conn.channel()  # what genloom 0.1 declared: a classic queue with dead-lettering
        await ch.declare_queue(m.dead_letter_queue(model), durable=True)
        await ch.declare_queue(m.queue_name(model), durable=True, arguments={
            "x-dead-letter-exchange": "", "x-dead-letter-routing-key": m.dead_letter_queue(model)})
        cfg = WorkerConfig(url=url, models={model: str(tiny_vae(tmp_path / "v.safetensors"))}, depth_interval_s=0)
        worker = QueueWorker(cfg)
        with pytest.raises(GenloomError) as e:
            await worker.start()
        msg = str(e.value)
        assert "\n" not in msg and f"queue {m.dead_letter_queue(model)} already exists as a classic queue" in msg
        assert f"rabbitmqctl delete_queue {m.dead_letter_queue(model)}" in msg and "--queue-type classic" in msg
        await worker.stop()
        classic = QueueWorker(WorkerConfig(url=url, models=cfg.models, queue_type="classic", depth_interval_s=0))
        await classic.start()  # the documented alternative works on the old queues
        try:
            async with QueueClient(url, timeout=30) as client:
                assert (await client.request(model, {"n": 1})).ok
        finally:
            await classic.stop()
    finally:
        await conn.close()
        await admin.delete_model_queues(url, model)


def test_precondition_messages() -> None:
    detail = ("PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'genloom.a' in vhost '/': "
              "received the value 'quorum' of type 'longstr' but current is none")
    msg = precondition_message("genloom.a", detail, "quorum")
    assert "already exists as a classic queue" in msg and "--queue-type classic" in msg
    other = precondition_message("genloom.a", "PRECONDITION_FAILED - inequivalent arg 'x-delivery-limit' for "
                                              "queue 'genloom.a' in vhost '/': received 4 but current is 2",
                                 "quorum")
    assert "x-delivery-limit differs" in other and "--delivery-limit" in other
    with pytest.raises(ValueError):
        Topology("lazy")
    assert Topology("quorum", 5).arguments("a")["x-delivery-limit"] == 4
    assert "x-delivery-limit" not in Topology("classic").arguments("a")
    assert aiormq  # imported for the exception types the declare path maps
