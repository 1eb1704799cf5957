import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from genloom.models.vae import VAE, VAEConfig


def test_shapes_and_loss_finite():
    m = VAE(VAEConfig())
    x = torch.rand(8, 1, 28, 28)
    out = m.loss((x, torch.zeros(8, dtype=torch.long)))
    assert out.loss.ndim == 0 and math.isfinite(out.loss.item())
    assert {"nelbo", "recon", "kl"} <= set(out.metrics)
    imgs = m.generate(5, generator=torch.Generator().manual_seed(0))
    assert imgs.shape == (5, 1, 28, 28) and 0 <= imgs.min() and imgs.max() <= 1


def test_kl_matches_torch_distributions():
    torch.manual_seed(0)
    m = VAE(VAEConfig())
    x = torch.rand(4, 784)
    mu, logvar = m.encode(x)
    q = Normal(mu, torch.exp(0.5 * logvar))
    expected = kl_divergence(q, Normal(torch.zeros_like(mu), torch.ones_like(mu))).sum(-1).mean()
    out = m.loss((x, None))
    assert float(out.metrics["kl"]) == pytest.approx(expected.item(), rel=1e-4)
    m_ = {k: float(v) for k, v in out.metrics.items()}
    assert m_["nelbo"] == pytest.approx(m_["recon"] + m_["kl"], rel=1e-5)


def test_bernoulli_recon_is_summed_bce():
    m = VAE(VAEConfig())
    x = torch.rand(3, 784)
    logits = torch.randn(3, 784)
    p = torch.sigmoid(logits)
    bce = -(x * p.log() + (1 - x) * (1 - p).log()).sum(-1)
    assert torch.allclose(-m.log_px_given_z(logits, x), bce, rtol=1e-4)


def test_beta_weights_kl_only():
    x = torch.rand(16, 784)
    torch.manual_seed(1)
    m = VAE(VAEConfig(beta=4.0))
    torch.manual_seed(2)
    out = m.loss((x, None))
    assert out.loss.item() == pytest.approx(float(out.metrics["recon"]) + 4.0 * float(out.metrics["kl"]), rel=1e-4)


def test_conditional_vae_uses_labels():
    torch.manual_seed(0)
    m = VAE(VAEConfig(num_classes=10))
    z = torch.randn(2, 20)
    a = m.decode(z, torch.tensor([0, 0]))
    b = m.decode(z, torch.tensor([7, 7]))
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="labels"):
        m.decode(z)
    imgs = m.generate(10, generator=torch.Generator().manual_seed(0))  # defaults to labels 0..9
    assert imgs.shape == (10, 1, 28, 28)


def test_gaussian_likelihood_trains():
    torch.manual_seed(0)
    m = VAE(VAEConfig(likelihood="gaussian"))
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    x = torch.rand(32, 784)
    first = None
    for _ in range(30):
        loss = m.loss((x, None)).loss
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first


def test_bad_config():
    with pytest.raises(ValueError, match="likelihood"):
        VAEConfig(likelihood="poisson")
