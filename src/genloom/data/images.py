"""Fashion-MNIST / MNIST: find the IDX files, download them (SHA-256 verified) if needed, hold them as tensors.

Resolution order: ``--data DIR`` → ``$GENLOOM_DATA`` (a directory holding the files, or holding
``<dataset>/`` sub-directories) → Debian's ``/usr/share/datasets/<dataset>`` (apt package
``dataset-fashion-mnist``) → the download cache (``$GENLOOM_CACHE`` or ``~/.cache/genloom``) → download from the
canonical mirrors into that cache, verifying each file's SHA-256 before it is used.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from genloom.data.idx import read_images_labels
from genloom.errors import DataError

FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    mirrors: tuple[str, ...]
    sha256: dict[str, str]  # file name -> hex digest of the canonical .gz file
    classes: tuple[str, ...]


DATASETS: dict[str, DatasetSpec] = {
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        sha256={
            "train-images-idx3-ubyte.gz": "08dc20ab1689590a0bcd66e874647b6ee8464e2d501b5a3f1f78831db19a3fdc",
            "train-labels-idx1-ubyte.gz": "b0197879cbda89f3dc7b894f9fd52b858e68ea4182b6947c9d8c2b67e5f18dcc",
            "t10k-images-idx3-ubyte.gz": "78dcbbfb5a27efaf1b6c1d616caca68560be8766c5bffcb2791df9273a534229",
            "t10k-labels-idx1-ubyte.gz": "42bd18137a62d5998cdeae52bf3a0676ac6b706f5cf8439b47bb5b151ae3dccf",
        },
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    ),
    "mnist": DatasetSpec(
        name="mnist",
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",
                 "https://storage.googleapis.com/cvdf-datasets/mnist/"),
        sha256={
            "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        },
        classes=tuple(str(i) for i in range(10)),
    ),
}

SYSTEM_DIR = Path("/usr/share/datasets")
VAL_SIZE = 5000


@dataclass(frozen=True)
class ImageData:
    """A whole split in memory: ``images`` (N, 28, 28) uint8, ``labels`` (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, sl: slice) -> "ImageData":
        return ImageData(self.images[sl], self.labels[sl])


@dataclass(frozen=True)
class ImageSplits:
    dataset: str
    train: ImageData
    val: ImageData
    test: ImageData  # the official test set: for evaluation only, never for model selection


def _spec(dataset: str) -> DatasetSpec:
    try:
        return DATASETS[dataset]
    except KeyError:
        raise DataError(f"unknown dataset {dataset!r}; choose one of: {', '.join(DATASETS)}") from None


def _find_in(d: Path, dataset: str) -> Path | None:
    """A directory holds the dataset if it has the 4 files, either as .gz or uncompressed (or in <dataset>/)."""
    for cand in (d, d / dataset):
        if all((cand / f).exists() or (cand / f.removesuffix(".gz")).exists() for f in FILES.values()):
            return cand
    return None


def cache_dir() -> Path:
    return Path(os.environ.get("GENLOOM_CACHE") or Path.home() / ".cache" / "genloom")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(dataset: str, dest: Path, *, mirrors: tuple[str, ...] | None = None, timeout: float = 30.0) -> Path:
    """Download the four files into ``dest`` from the first mirror that works, verifying SHA-256 of each.

    A file is written under a temporary name and renamed only after its checksum matches, so a partial or
    tampered download never lands in the cache.
    """
    spec = _spec(dataset)
    dest.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    for fname in FILES.values():
        target = dest / fname
        if target.exists() and sha256_file(target) == spec.sha256[fname]:
            continue
        for base in mirrors or spec.mirrors:
            url = base.rstrip("/") + "/" + fname
            tmp = None
            try:
                fd, tmp = tempfile.mkstemp(dir=dest, prefix=fname + ".", suffix=".part")
                h = hashlib.sha256()
                with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                    for chunk in iter(lambda: resp.read(1 << 20), b""):
                        h.update(chunk)
                        out.write(chunk)
                if h.hexdigest() != spec.sha256[fname]:
                    os.unlink(tmp)
                    errors.append(f"{url}: SHA-256 mismatch (got {h.hexdigest()[:16]}…)")
                    continue
                os.replace(tmp, target)
                break
            except (urllib.error.URLError, OSError, TimeoutError) as e:
                if tmp and os.path.exists(tmp):
                    os.unlink(tmp)
                errors.append(f"{url}: {e}")
        else:
            raise DataError(f"could not download {dataset} file {fname}: " + "; ".join(errors[-2:]))
    return dest


def locate(dataset: str, data: str | Path | None = None, *, allow_download: bool = True) -> Path:
    """Return the directory that holds ``dataset``'s four IDX files (see the module docstring for the order)."""
    _spec(dataset)
    if data is not None:
        d = Path(data)
        found = _find_in(d, dataset)
        if found is None:
            raise DataError(f"--data {d}: no {dataset} IDX files there (need {', '.join(FILES.values())})")
        return found
    candidates = []
    if os.environ.get("GENLOOM_DATA"):
        candidates.append(Path(os.environ["GENLOOM_DATA"]))
    candidates += [SYSTEM_DIR / dataset, cache_dir() / dataset]
    for d in candidates:
        found = _find_in(d, dataset)
        if found is not None:
            return found
    if allow_download and os.environ.get("GENLOOM_NO_DOWNLOAD") != "1":
        try:
            return download(dataset, cache_dir() / dataset)
        except DataError as e:
            raise DataError(f"{dataset} not found locally and download failed ({e}). Install it with "
                            f"`apt-get install -y dataset-fashion-mnist` (Fashion-MNIST) or pass --data DIR "
                            f"holding the four IDX files") from None
    raise DataError(f"{dataset} not found. Install it with `apt-get install -y dataset-fashion-mnist` "
                    f"(Fashion-MNIST) or pass --data DIR holding the four IDX files")


def _load_pair(d: Path, img: str, lab: str) -> ImageData:
    def pick(f: str) -> Path:
        return d / f if (d / f).exists() else d / f.removesuffix(".gz")

    x, y = read_images_labels(pick(img), pick(lab))
    return ImageData(torch.from_numpy(x.copy()), torch.from_numpy(y.astype(np.int64)))


def load_images(dataset: str = "fashion-mnist", data: str | Path | None = None, *,
                val_size: int | None = None) -> ImageSplits:
    """Load train/val/test splits. Validation is the *last* ``val_size`` training images (default 5,000, or a
    tenth of a smaller training set)."""
    d = locate(dataset, data)
    train = _load_pair(d, FILES["train_images"], FILES["train_labels"])
    test = _load_pair(d, FILES["test_images"], FILES["test_labels"])
    if val_size is None:
        val_size = min(VAL_SIZE, len(train) // 10)
    if not 0 <= val_size < len(train):
        raise DataError(f"val_size {val_size} must be below the training set size {len(train)}")
    n = len(train) - val_size
    return ImageSplits(dataset, train.subset(slice(0, n)), train.subset(slice(n, None)), test)
