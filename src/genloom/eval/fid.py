"""Fréchet distance between feature statistics of real and generated images (FID, Heusel et al. 2017).

The features are the 128-d penultimate activations of genloom's own small CNN classifier (``models/
classifier.py``), trained on the same dataset, not Inception's: numbers are comparable between genloom models on
the same classifier file, not with published FIDs. Real statistics come from the test set (10,000 images),
generated ones from 10,000 samples by default.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genloom.errors import GenloomError
from genloom.fileformat import atomic_write

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets"
SHIPPED = {"fashion-mnist": "fmnist_classifier.safetensors"}


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """d² = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½) between N(μ₁, Σ₁) and N(μ₂, Σ₂).

    Tr((Σ₁Σ₂)^½) = Tr((Σ₁^½ Σ₂ Σ₁^½)^½) = Σᵢ √λᵢ, λ the eigenvalues of the symmetric PSD matrix Σ₁^½ Σ₂ Σ₁^½:
    symmetric eigendecompositions only, in float64, so there is no complex-valued sqrtm to clean up.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"shape mismatch: μ {mu1.shape} vs {mu2.shape}, Σ {s1.shape} vs {s2.shape}")
    w1, v1 = np.linalg.eigh((s1 + s1.T) / 2)
    sqrt_s1 = (v1 * np.sqrt(np.clip(w1, 0, None))) @ v1.T  # Σ₁^½
    m = sqrt_s1 @ s2 @ sqrt_s1
    lam = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(lam, 0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (F,) and unbiased covariance (F, F) of (N, F) features, in float64."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"need (N ≥ 2, F) features, got shape {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def find_classifier(path: str | Path | None = None, *, dataset: str = "fashion-mnist") -> Path:
    """--classifier PATH, else $GENLOOM_CLASSIFIER, else the file shipped with genloom for ``dataset``."""
    if path is not None:
        return Path(path)
    if os.environ.get("GENLOOM_CLASSIFIER"):
        return Path(os.environ["GENLOOM_CLASSIFIER"])
    if dataset in SHIPPED and (ASSET_DIR / SHIPPED[dataset]).exists():
        return ASSET_DIR / SHIPPED[dataset]
    raise GenloomError(f"no feature classifier for {dataset}: train one with `genloom train classifier --dataset "
                       f"{dataset} --out runs/classifier` and pass --classifier runs/classifier/model.safetensors")


def load_classifier(path: str | Path | None = None, *, dataset: str = "fashion-mnist") -> torch.nn.Module:
    from genloom import export

    p = find_classifier(path, dataset=dataset)
    info = export.read_header(p)
    if info.kind != "classifier":
        raise GenloomError(f"{p}: is a {info.kind!r} model, not a classifier; pass a file made by "
                           f"`genloom train classifier`")
    trained_on = info.provenance.get("dataset")
    if trained_on and trained_on != dataset:
        raise GenloomError(f"{p}: this classifier was trained on {trained_on}, the images are {dataset}; "
                           f"pass --classifier with a {dataset} classifier")
    return export.load(p)


@torch.inference_mode()
def features(classifier: torch.nn.Module, images: torch.Tensor, *, batch_size: int = 1000) -> np.ndarray:
    """Features of uint8 (N, 28, 28) or float (N, 1, 28, 28) images in [0, 1] → (N, F) float64."""
    classifier.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size]
        x = x.float().div(255.0) if x.dtype == torch.uint8 else x.float().clamp(0.0, 1.0)
        out.append(classifier.features(x.reshape(len(x), 1, 28, 28)).double().numpy())  # (b, F)
    return np.concatenate(out)


@torch.inference_mode()
def sample_features(model: torch.nn.Module, classifier: torch.nn.Module, *, n: int, seed: int = 0,
                    batch_size: int = 500, **generate_kw: Any) -> np.ndarray:
    """Features of n samples drawn in batches from one seeded generator; conditional models cycle the classes."""
    g = torch.Generator().manual_seed(seed)
    num_classes = int(getattr(model.config, "num_classes", 0))
    out = []
    for i in range(0, n, batch_size):
        b = min(batch_size, n - i)
        labels = (torch.arange(i, i + b) % num_classes) if num_classes else None
        imgs = model.generate(b, generator=g, labels=labels, **generate_kw)  # (b, 1, 28, 28) in [0, 1]
        out.append(features(classifier, imgs.cpu()))  # the feature classifier stays on the CPU
    return np.concatenate(out)


def real_stats(classifier_path: str | Path, classifier: torch.nn.Module, images: torch.Tensor
               ) -> tuple[np.ndarray, np.ndarray]:
    """Feature statistics of real images, cached on disk under the download cache (``$GENLOOM_CACHE/fid``),
    keyed by the SHA-256 of the classifier file and of the image bytes, so a changed file never hits a stale entry."""
    from genloom.data.images import cache_dir, sha256_file

    h = hashlib.sha256(sha256_file(Path(classifier_path)).encode())
    h.update(str(tuple(images.shape)).encode() + str(images.dtype).encode())
    h.update(images.contiguous().numpy().tobytes())
    path = cache_dir() / "fid" / f"{h.hexdigest()[:32]}.npz"
    try:
        with np.load(path) as z:
            return z["mu"], z["sigma"]
    except (OSError, KeyError, ValueError):
        pass  # missing or unreadable: compute it again
    mu, sigma = feature_stats(features(classifier, images))
    try:
        atomic_write(path, lambda f: np.savez(f, mu=mu, sigma=sigma))
    except OSError:
        pass  # a read-only cache only costs the recomputation
    return mu, sigma


def fid(model: torch.nn.Module, classifier: torch.nn.Module, real_images: torch.Tensor, *, n_samples: int = 10_000,
        seed: int = 0, real_stats: tuple[np.ndarray, np.ndarray] | None = None, **generate_kw: Any) -> float:
    """FID of ``model``'s samples against ``real_images`` (the test set), in the classifier's feature space."""
    if n_samples < 2:
        raise GenloomError(f"--fid-samples must be ≥ 2 (10000 is the standard), got {n_samples}")
    mu_r, s_r = real_stats if real_stats is not None else feature_stats(features(classifier, real_images))
    mu_g, s_g = feature_stats(sample_features(model, classifier, n=n_samples, seed=seed, **generate_kw))
    return frechet_distance(mu_r, s_r, mu_g, s_g)
