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

URL = os.environ.get("GENLOOM_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def require_broker() -> str:
    u = urlparse(URL)
    try:
        socket.create_connection((u.hostname or "127.0.0.1", u.port or 5672), timeout=2).close()
    except OSError as e:
        pytest.fail(f"RabbitMQ is not reachable at {u.hostname}:{u.port or 5672} ({e}); start it "
                    f"(e.g. `rabbitmq-server -detached`) or set GENLOOM_AMQP_URL", pytrace=False)
    return URL


def tiny_vae(path: Path, *, num_classes: int = 0) -> Path:
    torch.manual_seed(0)
    return save(VAE(VAEConfig(enc_hidden=(16,), dec_hidden=(16,), latent=4, num_classes=num_classes)), path)


def unique_model() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def cleanup(model: str) -> None:
    from genloom.queue.admin import delete_model_queues

    asyncio.run(delete_model_queues(URL, model))


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
