"""Shared fixtures: small IDX datasets written to a temp dir, and tiny models."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from genloom.data.idx import write_idx

# backend="auto" measures and caches its choice per file and machine; tests keep that cache out of the home dir
os.environ.setdefault("GENLOOM_ENGINE_CACHE", tempfile.mkdtemp(prefix="genloom-engine-cache-"))


def make_idx_dataset(d: Path, *, n_train: int = 600, n_test: int = 200, seed: int = 0) -> Path:
    """Four gzip IDX files with blobby 28x28 images whose mean brightness depends on the label."""
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        imgs = (rng.random((n, 28, 28)) * 60 + labels[:, None, None] * 19).clip(0, 255).astype(np.uint8)
        write_idx(d / f"{split}-images-idx3-ubyte.gz", imgs)
        write_idx(d / f"{split}-labels-idx1-ubyte.gz", labels)
    return d


@pytest.fixture(scope="session")
def fmnist():
    """The real Fashion-MNIST splits (Debian's dataset-fashion-mnist or $GENLOOM_DATA); skips where absent."""
    from genloom.data.images import load_images
    from genloom.errors import DataError

    try:
        return load_images("fashion-mnist")
    except DataError as e:
        pytest.skip(f"Fashion-MNIST not available: {e}")


@pytest.fixture
def idx_dir(tmp_path: Path) -> Path:
    return make_idx_dataset(tmp_path / "fake-mnist")


@pytest.fixture(autouse=True)
def _small_threads_and_no_leaked_grad_mode():
    # tiny models on a shared 2-core machine: one intra-op thread avoids OpenMP spinning under contention
    torch.set_num_threads(1)
    yield
    if not torch.is_grad_enabled():  # a test (or the code under test) switched autograd off globally
        torch.set_grad_enabled(True)
        pytest.fail("autograd was left disabled globally; use a `with torch.no_grad():` block instead")


@pytest.fixture(autouse=True, scope="session")
def _no_queues_left_on_the_broker():
    """After the whole run: every queue a test created (named by queue_helpers, tagged with this run) must be
    gone from the broker. A leak is deleted here and then fails the run, naming the queues."""
    yield
    helpers = sys.modules.get("queue_helpers")
    if helpers is None or not helpers.USED:
        return  # no test reached the broker
    leaked = helpers.leaked_queues()
    if leaked:
        helpers.delete_queues(leaked)
        pytest.fail(f"the tests left {len(leaked)} queue(s) on the broker: {', '.join(leaked)}; delete every "
                    f"queue a test declares (queue_helpers.cleanup / delete_queues in a finally)", pytrace=False)
