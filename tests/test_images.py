"""Dataset resolution and the SHA-256-verified download, against a local HTTP server."""
import dataclasses
import functools
import hashlib
import http.server
import threading

import pytest
import torch

from genloom.data import images
from genloom.data.batches import ImageBatches
from genloom.errors import DataError

from conftest import make_idx_dataset


@pytest.fixture
def no_system(monkeypatch, tmp_path):
    monkeypatch.setattr(images, "SYSTEM_DIR", tmp_path / "nosys")
    monkeypatch.setenv("GENLOOM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("GENLOOM_DATA", raising=False)


def test_explicit_data_dir_and_val_split(idx_dir, no_system):
    s = images.load_images("fashion-mnist", idx_dir, val_size=100)
    assert len(s.train) == 500 and len(s.val) == 100 and len(s.test) == 200
    assert s.train.images.dtype == torch.uint8 and s.train.images.shape[1:] == (28, 28)


def test_env_var_then_system(idx_dir, no_system, monkeypatch, tmp_path):
    monkeypatch.setenv("GENLOOM_DATA", str(idx_dir))
    assert images.locate("fashion-mnist") == idx_dir
    monkeypatch.delenv("GENLOOM_DATA")
    sysdir = tmp_path / "sys"
    make_idx_dataset(sysdir / "mnist")
    monkeypatch.setattr(images, "SYSTEM_DIR", sysdir)
    assert images.locate("mnist") == sysdir / "mnist"


def test_missing_dataset_says_how_to_get_it(no_system, monkeypatch):
    monkeypatch.setenv("GENLOOM_NO_DOWNLOAD", "1")
    with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist.*--data"):
        images.locate("fashion-mnist")


def test_bad_data_flag(tmp_path, no_system):
    with pytest.raises(DataError, match="--data .*no fashion-mnist IDX files"):
        images.locate("fashion-mnist", tmp_path)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass


@pytest.fixture
def http_server(tmp_path):
    root = make_idx_dataset(tmp_path / "mirror")
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield root, f"http://127.0.0.1:{srv.server_address[1]}/"
    srv.shutdown()


def _spec_for(root):
    sums = {f: hashlib.sha256((root / f).read_bytes()).hexdigest() for f in images.FILES.values()}
    return dataclasses.replace(images.DATASETS["mnist"], sha256=sums)


def test_download_verifies_sha256(http_server, no_system, monkeypatch, tmp_path):
    root, url = http_server
    monkeypatch.setitem(images.DATASETS, "mnist", dataclasses.replace(_spec_for(root), mirrors=(url,)))
    d = images.locate("mnist")  # nothing local → downloads into the cache
    assert d == tmp_path / "cache" / "mnist"
    for f in images.FILES.values():
        assert (d / f).read_bytes() == (root / f).read_bytes()
    assert len(images.load_images("mnist", val_size=50).test) == 200


def test_download_rejects_checksum_mismatch(http_server, no_system, monkeypatch, tmp_path):
    root, url = http_server
    spec = _spec_for(root)
    bad = dict(spec.sha256, **{"train-images-idx3-ubyte.gz": "0" * 64})
    monkeypatch.setitem(images.DATASETS, "mnist", dataclasses.replace(spec, sha256=bad, mirrors=(url,)))
    with pytest.raises(DataError, match="SHA-256 mismatch"):
        images.download("mnist", tmp_path / "dl")
    assert not (tmp_path / "dl" / "train-images-idx3-ubyte.gz").exists()
    assert not list((tmp_path / "dl").glob("*.part"))


def test_download_falls_back_to_next_mirror(http_server, no_system, monkeypatch, tmp_path):
    root, url = http_server
    spec = dataclasses.replace(_spec_for(root), mirrors=("http://127.0.0.1:9/", url))
    monkeypatch.setitem(images.DATASETS, "mnist", spec)
    images.download("mnist", tmp_path / "dl", timeout=2)
    assert (tmp_path / "dl" / "t10k-labels-idx1-ubyte.gz").exists()


def test_batches_cover_each_item_once_and_resume_mid_epoch(idx_dir, no_system):
    s = images.load_images("fashion-mnist", idx_dir, val_size=100)
    src = ImageBatches(s.train, 64)
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    full = list(src.epoch(g))
    assert len(full) == len(src) == 8
    assert sum(len(y) for _, y in full) == 500
    x, _ = full[0]
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    g.set_state(state)
    tail = list(src.epoch(g, start=5))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full[5:], tail))
