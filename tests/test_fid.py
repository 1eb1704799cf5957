"""FID math against closed forms, the classifier lookup, and FID on real images with the shipped classifier."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import scipy.linalg
import torch

from genloom import export
from genloom.errors import GenloomError
from genloom.eval.fid import (ASSET_DIR, feature_stats, features, fid, find_classifier, frechet_distance,
                              load_classifier)


def _random_cov(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_identical_gaussians_give_zero() -> None:
    rng = np.random.default_rng(0)
    mu, s = rng.normal(size=8), _random_cov(rng, 8)
    assert frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-9)


def test_diagonal_gaussians_closed_form() -> None:
    """Commuting (diagonal) covariances: d² = ‖μ₁ − μ₂‖² + Σᵢ (√aᵢ − √bᵢ)²."""
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    expected = 1 + 0 + 4 + (1 - 2) ** 2 + (2 - 1) ** 2 + (3 - 0.5) ** 2
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_general_gaussians_match_scipy_sqrtm() -> None:
    """Non-commuting covariances: the reference formula with scipy's matrix square root of Σ₁Σ₂."""
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    s1, s2 = _random_cov(rng, 6), _random_cov(rng, 6)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1 + s2 - 2 * covmean))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


def test_two_samples_of_one_distribution_are_near_zero_and_of_two_match_closed_form() -> None:
    rng = np.random.default_rng(2)
    d = 4
    mu1, mu2 = np.zeros(d), np.full(d, 0.5)
    s1, s2 = _random_cov(rng, d), _random_cov(rng, d)
    x1 = rng.multivariate_normal(mu1, s1, size=40_000)
    x2 = rng.multivariate_normal(mu1, s1, size=40_000)
    y = rng.multivariate_normal(mu2, s2, size=40_000)
    same = frechet_distance(*feature_stats(x1), *feature_stats(x2))
    true = frechet_distance(mu1, s1, mu2, s2)
    est = frechet_distance(*feature_stats(x1), *feature_stats(y))
    assert same < 0.01 * true
    assert est == pytest.approx(true, rel=0.05)


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_classifier_lookup(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("GENLOOM_CLASSIFIER", raising=False)
    assert find_classifier(dataset="fashion-mnist") == ASSET_DIR / "fmnist_classifier.safetensors"
    with pytest.raises(GenloomError, match="genloom train classifier"):
        find_classifier(dataset="mnist")
    monkeypatch.setenv("GENLOOM_CLASSIFIER", str(tmp_path / "c.safetensors"))
    assert find_classifier(dataset="mnist") == tmp_path / "c.safetensors"
    # a file that is not a classifier, or one trained on another dataset, is refused with the fix named
    from genloom.models.gan import GAN, GANConfig

    export.save(GAN(GANConfig(dim=4, latent=4)), tmp_path / "gan.safetensors", provenance={"dataset": "mnist"})
    with pytest.raises(GenloomError, match="not a classifier"):
        load_classifier(tmp_path / "gan.safetensors")
    with pytest.raises(GenloomError, match="trained on fashion-mnist"):
        load_classifier(ASSET_DIR / "fmnist_classifier.safetensors", dataset="mnist")


class Replay(torch.nn.Module):
    """A 'model' whose samples are given images, cycled: FID of real data against real data."""

    def __init__(self, images: torch.Tensor) -> None:
        super().__init__()
        self.images, self.i = images, 0
        self.config = SimpleNamespace(num_classes=0)

    def generate(self, n: int, *, generator=None, labels=None) -> torch.Tensor:
        idx = torch.arange(self.i, self.i + n) % len(self.images)
        self.i += n
        return self.images[idx].float().div(255).unsqueeze(1)  # (n, 1, 28, 28)


def test_fid_of_real_train_images_is_small_and_of_noise_is_large(fmnist) -> None:
    clf = load_classifier()
    test = fmnist.test.images[:1000]
    real = fid(Replay(fmnist.train.images[:1000]), clf, test, n_samples=1000)

    class Noise(Replay):
        def generate(self, n, *, generator=None, labels=None):
            return torch.rand(n, 1, 28, 28, generator=generator)

    noise = fid(Noise(test), clf, test, n_samples=1000)
    assert 0 <= real < 0.02 * noise, (real, noise)
    assert features(clf, test[:5]).shape == (5, 128)


def test_real_stats_cache_is_keyed_by_images_and_classifier(tmp_path, monkeypatch) -> None:
    from genloom.eval.fid import real_stats

    monkeypatch.setenv("GENLOOM_CACHE", str(tmp_path))
    clf = load_classifier()
    path = find_classifier()
    imgs = torch.randint(0, 256, (50, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mu, sigma = real_stats(path, clf, imgs)
    np.testing.assert_allclose(mu, feature_stats(features(clf, imgs))[0])
    assert len(list((tmp_path / "fid").glob("*.npz"))) == 1
    mu2, _ = real_stats(path, clf, imgs)  # from the cache
    np.testing.assert_array_equal(mu, mu2)
    other = imgs.clone()
    other[0, 0, 0] ^= 1
    real_stats(path, clf, other)  # one changed pixel: a new entry, never the stale one
    assert len(list((tmp_path / "fid").glob("*.npz"))) == 2
