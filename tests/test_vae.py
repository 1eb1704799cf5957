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


def _pixel_vae(seed: int = 0, **kw) -> VAE:
    torch.manual_seed(seed)
    m = VAE(VAEConfig(latent=8, enc_hidden=(32,), dec_hidden=(32,), ar_kernel=3, **kw))
    for p in m.parameters():  # larger than the default init, so every path carries signal
        torch.nn.init.normal_(p, std=0.3)
    return m


def test_pixel_head_is_causal_in_raster_order():
    """Pixel i's logit changes with pixels before i (its neighbours) and never with pixel i or any later one."""
    m = _pixel_vae()
    h = m.decoder(torch.randn(1, 8)).detach()
    x = torch.rand(1, 784)
    base = m._pixel_logits(h, x)[0]
    for j in (0, 27, 28, 405, 783):
        x2 = x.clone()
        x2[0, j] += 0.5
        d = (m._pixel_logits(h, x2)[0] - base).abs()
        assert float(d[:j + 1].max()) == 0.0  # itself and everything before it: untouched
        later = {j + 1, j + 27, j + 28, j + 29} & set(range(784))  # right, and the three below (3×3 window)
        later = {i for i in later if abs(i % 28 - j % 28) <= 1}
        assert all(d[i] > 0 for i in later), (j, later)
        rest = [i for i in range(j + 1, 784) if i not in later]
        assert not rest or float(d[rest].max()) == 0.0  # outside the window: untouched


def test_pixel_sampling_is_the_teacher_forced_heads_fixed_point():
    """decode() feeds each pixel's mean back: scoring its own output with the head reproduces the output."""
    m = _pixel_vae(num_classes=3)
    z, labels = torch.randn(5, 8), torch.tensor([0, 1, 2, 0, 1])
    out = m.decode(z, labels).reshape(5, 784)
    again = torch.sigmoid(m.decode_logits(z, labels, out))
    assert torch.allclose(again, out, atol=1e-6) and 0 <= float(out.min()) and float(out.max()) <= 1
    assert m.generate(4).shape == (4, 1, 28, 28)
    with pytest.raises(ValueError, match="pass x"):
        m.decode_logits(z, labels)


def test_pixel_head_trains_and_beats_the_factorised_decoder_on_smooth_images():
    """On images whose pixels copy their left neighbour, the head predicts what a factorised decoder cannot."""
    torch.manual_seed(0)
    rows = torch.rand(64, 28, 1).expand(64, 28, 28)  # each row one grey level: pixel = its left neighbour
    x = rows.reshape(64, 784).contiguous()
    losses = {}
    for k in (0, 3):
        torch.manual_seed(0)
        m = VAE(VAEConfig(latent=2, enc_hidden=(32,), dec_hidden=(32,), ar_kernel=k))
        opt = torch.optim.Adam(m.parameters(), lr=3e-3)
        for _ in range(150):
            out = m.loss((x, None))
            opt.zero_grad()
            out.loss.backward()
            opt.step()
        losses[k] = out.loss.item()
    assert losses[3] < losses[0] - 20, losses  # 28 grey levels through a 2-d latent vs one copy per pixel


def test_pixel_head_config_errors():
    for bad in ({"ar_kernel": 2}, {"ar_kernel": 1}, {"ar_kernel": 3, "ar_hidden": 0},
                {"ar_kernel": 3, "x_dim": 100}):
        with pytest.raises(ValueError):
            VAEConfig(**bad)
