"""Shared pieces of the queue tests: the broker URL, tiny model files, unique model names, cleanup."""
from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch

from genloom.export import save
from genloom.models.vae import VAE, VAEConfig
from genloom.queue import DEFAULT_URL, admin

URL = os.environ.get("GENLOOM_AMQP_URL", DEFAULT_URL)

# Every queue and model name a test makes carries this run's tag, so that the session-end check in conftest.py
# (``leaked_queues``) finds exactly what this run left on the broker, even with other runs using it at once.
SESSION_TAG = uuid.uuid4().hex[:6]
ISSUED: list[str] = []  # queue names (raw, or genloom.<model> and its dead-letter queue) handed out this run
USED = False  # set once a test reached the broker: only then does the session-end check run


def require_broker() -> str:
    u = urlparse(URL)
    try:
        socket.create_connection((u.hostname or "127.0.0.1", u.port or 5672), timeout=2).close()
    except OSError as e:
        pytest.fail(f"RabbitMQ is not reachable at {u.hostname}:{u.port or 5672} ({e}); start it "
                    f"(e.g. `rabbitmq-server -detached`) or set GENLOOM_AMQP_URL", pytrace=False)
    global USED
    USED = True
    return URL


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a worker's metrics endpoint): a fixed port
    collides with another test run on the same machine."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tiny_vae(path: Path, *, num_classes: int = 0) -> Path:
    torch.manual_seed(0)
    return save(VAE(VAEConfig(enc_hidden=(16,), dec_hidden=(16,), latent=4, num_classes=num_classes)), path)


def unique_model() -> str:
    """A model name of this run: its queues are genloom.<name>, genloom.<name>.urgent and genloom.<name>.dead."""
    from genloom.queue.topology import all_queues

    name = f"t-{SESSION_TAG}-{uuid.uuid4().hex[:8]}"
    ISSUED.extend(all_queues(name))
    return name


def unique_queue(prefix: str) -> str:
    """A raw queue name of this run, for tests that declare queues themselves (delete it in a finally)."""
    name = f"t-{prefix}-{SESSION_TAG}-{uuid.uuid4().hex[:8]}"
    ISSUED.append(name)
    return name


def leaked_queues() -> list[str]:
    """Queues on the broker that carry this run's tag: every one is a leak once the tests are done.

    ``rabbitmqctl list_queues`` when it is usable (it sees every queue, whatever a test called it); otherwise a
    passive declare of each name handed out by ``unique_model`` / ``unique_queue``."""
    import shutil

    if shutil.which("rabbitmqctl") is not None and urlparse(URL).hostname in ("127.0.0.1", "localhost"):
        try:
            res = subprocess.run(["rabbitmqctl", "-q", "list_queues", "--no-table-headers", "name"],
                                 capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            res = None
        if res is not None and res.returncode == 0:
            return sorted(n.strip() for n in res.stdout.splitlines() if SESSION_TAG in n)
    return asyncio.run(admin.existing_queues(URL, ISSUED))


def delete_queues(names: list[str]) -> None:
    asyncio.run(admin.delete_queues(URL, names))


def cleanup(model: str) -> None:
    asyncio.run(admin.delete_model_queues(URL, model))


def close_connections_named(name: str) -> int:
    """Drop the broker connections whose client named itself ``name`` (like a network cut); returns how many."""
    import shutil

    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is not on PATH (run the tests on the broker host, as root, to drop connections)")
    out = subprocess.run(["rabbitmqctl", "-q", "list_connections", "--no-table-headers", "pid", "client_properties"],
                         capture_output=True, text=True, timeout=60).stdout
    pids = [line.split("\t")[0] for line in out.splitlines() if f'"connection_name","{name}"' in line]
    for pid in pids:
        subprocess.run(["rabbitmqctl", "-q", "close_connection", pid, "test: dropped connection"],
                       capture_output=True, timeout=60)
    return len(pids)
