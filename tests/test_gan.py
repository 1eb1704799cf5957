"""GAN losses against closed forms, the n_critic step, EMA, config validation."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from genloom.models.gan import (GAN, GANConfig, gradient_penalty, hinge_critic_loss, r3gan_critic_loss,
                                wgan_gp_critic_loss)


class Linear(nn.Module):
    """D(x) = w·x + b: ∇ₓD = w everywhere, so ‖∇‖₂ = ‖w‖₂ for every x."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        w = torch.randn(784, generator=g)
        self.w = nn.Parameter(w / w.norm() * scale)
        self.b = nn.Parameter(torch.tensor(0.3))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return x.flatten(1) @ self.w + self.b


class HalfSquare(nn.Module):
    """D(x) = ½‖x‖²: ∇ₓD = x, so ‖∇‖₂ at x̂ is ‖x̂‖₂, which depends on each sample's own ε."""

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return 0.5 * x.flatten(1).pow(2).sum(1)


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("scale", [0.25, 1.0, 3.0])
def test_gradient_penalty_linear_critic_closed_form(scale: float) -> None:
    D = Linear(scale)
    real, fake = _images(16, 1), _images(16, 2)
    eps = torch.rand(16, 1, 1, 1)
    expected = (scale - 1.0) ** 2  # (‖w‖ − 1)²
    assert float(gradient_penalty(D, real, fake, eps)) == pytest.approx(expected, rel=1e-5, abs=1e-7)
    loss, m = wgan_gp_critic_loss(D, real, fake, None, lam=10.0, eps=eps)
    assert m["penalty"] == pytest.approx(expected, rel=1e-5, abs=1e-7)
    # L = E[D(x̃)] − E[D(x)] + λ(‖w‖ − 1)²
    w_dist = float((real.flatten(1) @ D.w).mean() - (fake.flatten(1) @ D.w).mean())
    assert m["w_dist"] == pytest.approx(w_dist, rel=1e-5)
    assert float(loss) == pytest.approx(-w_dist + 10.0 * expected, rel=1e-5, abs=1e-6)


def test_gradient_penalty_backpropagates_to_critic_weights() -> None:
    """create_graph=True: ∂/∂w of λ(‖w‖ − 1)² is 2λ(‖w‖ − 1)·w/‖w‖, plus E[x̃] − E[x] from the Wasserstein term."""
    D = Linear(2.0)
    real, fake = _images(8, 3), _images(8, 4)
    loss, _ = wgan_gp_critic_loss(D, real, fake, None, lam=10.0, eps=torch.rand(8, 1, 1, 1))
    loss.backward()
    w = D.w.detach()
    expected = fake.flatten(1).mean(0) - real.flatten(1).mean(0) + 2 * 10.0 * (w.norm() - 1) * w / w.norm()
    torch.testing.assert_close(D.w.grad, expected, rtol=1e-4, atol=1e-5)


def test_gradient_penalty_is_per_sample_at_interpolates() -> None:
    D = HalfSquare()
    real, fake = _images(6, 5), _images(6, 6)
    eps = torch.tensor([0.0, 0.2, 0.4, 0.6, 0.8, 1.0]).view(6, 1, 1, 1)
    x_hat = eps * real + (1 - eps) * fake
    expected = ((x_hat.flatten(1).norm(dim=1) - 1) ** 2).mean()
    assert float(gradient_penalty(D, real, fake, eps)) == pytest.approx(float(expected), rel=1e-5)
    _, m = wgan_gp_critic_loss(D, real, fake, None, lam=1.0, eps=eps)
    assert m["penalty"] == pytest.approx(float(expected), rel=1e-5)


def test_r3gan_penalties_and_relativistic_loss_closed_form() -> None:
    D = Linear(1.5)
    real, fake = _images(8, 7), _images(8, 8)
    loss, m = r3gan_critic_loss(D, real, fake, None, gamma=0.2)
    assert m["penalty"] == pytest.approx(2 * 1.5 ** 2, rel=1e-5)  # R1 = R2 = ‖w‖²
    d_r, d_f = D(real), D(fake)
    expected = torch.nn.functional.softplus(d_f - d_r).mean() + 0.2 / 2 * 2 * 1.5 ** 2
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def test_hinge_loss_closed_form() -> None:
    D = Linear(1.0)
    real, fake = _images(8, 9), _images(8, 10)
    loss, _ = hinge_critic_loss(D, real, fake, None)
    expected = torch.relu(1 - D(real)).mean() + torch.relu(1 + D(fake)).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)


class Hooks:
    def __init__(self, opts: dict[str, torch.optim.Optimizer]) -> None:
        self.opts, self.calls = opts, []

    def clip_and_step(self, name: str, loss: torch.Tensor, *, params=None) -> float:
        self.calls.append(name)
        self.opts[name].zero_grad(set_to_none=True)
        loss.backward()
        self.opts[name].step()
        return math.nan


def _tiny(**kw) -> GAN:
    return GAN(GANConfig(**{"dim": 8, "latent": 16, "kernel": 4, **kw}))


@pytest.mark.parametrize("arch", ["conv", "mlp"])
@pytest.mark.parametrize("loss", ["wgan-gp", "hinge", "r3gan"])
def test_train_step_schedule_and_shapes(arch: str, loss: str) -> None:
    torch.manual_seed(0)
    m = _tiny(arch=arch, loss=loss, n_critic=3, dim=8 if arch == "conv" else 32)
    opts = m.configure_optimizers(SimpleNamespace(lr=1e-4, betas=(0.5, 0.9), weight_decay=0.0))
    hooks = Hooks(opts)
    g_before = [p.detach().clone() for p in m.generator.parameters()]
    out = m.train_step((_images(12, 0), torch.zeros(12, dtype=torch.long)), opts, 0, hooks)
    assert hooks.calls == ["critic"] * 3 + ["generator"]
    assert out.n == 12 and math.isfinite(float(out.loss))
    assert set(m.progress_metrics) <= set(out.metrics)
    assert any(not torch.equal(a, b) for a, b in zip(g_before, m.generator.parameters()))
    assert all(p.requires_grad for p in m.critic.parameters())  # unfrozen after the generator step
    imgs = m.generate(5, generator=torch.Generator().manual_seed(0))
    assert imgs.shape == (5, 1, 28, 28) and 0 <= float(imgs.min()) and float(imgs.max()) <= 1


def test_ema_warmup_tracks_early_then_averages() -> None:
    m = _tiny(ema_kimg=1.0, ema_rampup=0.05)
    with torch.no_grad():
        for p in m.generator.parameters():
            p.add_(1.0)
    m.update_ema(64)  # 64 images seen: half-life 3.2 images ⇒ β = 0.5^20 ≈ 1e-6: the EMA copies the generator
    for e, g in zip(m.ema.parameters(), m.generator.parameters()):
        torch.testing.assert_close(e, g, rtol=0, atol=1e-5)
    m.ema_images.fill_(10**6)  # late: half-life capped at 1000 images ⇒ β = 0.5^(64/1000)
    before = [p.clone() for p in m.ema.parameters()]
    with torch.no_grad():
        for p in m.generator.parameters():
            p.add_(1.0)
    m.update_ema(64)
    beta = 0.5 ** (64 / 1000)
    for e, b, g in zip(m.ema.parameters(), before, m.generator.parameters()):
        torch.testing.assert_close(e, beta * b + (1 - beta) * g, rtol=1e-5, atol=1e-6)
    assert not any(p.requires_grad for p in m.ema.parameters())
    assert "ema_images" in m.state_dict() and any(k.startswith("ema.") for k in m.state_dict())


def test_conditional_generation_and_projection_critic() -> None:
    m = _tiny(num_classes=10)
    a = m.generate(4, generator=torch.Generator().manual_seed(1), labels=torch.tensor([0, 1, 2, 3]))
    b = m.generate(4, generator=torch.Generator().manual_seed(1), labels=torch.tensor([5, 1, 2, 3]))
    assert not torch.equal(a[0], b[0]) and torch.equal(a[1:], b[1:])  # the label changes only its own image
    d = m.critic(a, torch.tensor([0, 1, 2, 3]))
    assert d.shape == (4,)


@pytest.mark.parametrize("bad", [{"critic_norm": "batch"}, {"loss": "wgan"}, {"kernel": 7}, {"n_critic": 0},
                                 {"arch": "resnet"}])
def test_config_rejects_bad_values(bad: dict) -> None:
    with pytest.raises(ValueError):
        GANConfig(**bad)


def test_spectral_norm_only_for_hinge() -> None:
    names = lambda m: " ".join(k for k, _ in m.critic.named_parameters())
    assert "parametrizations" in names(_tiny(loss="hinge"))
    assert "parametrizations" not in names(_tiny(loss="wgan-gp"))


def test_batch_norm_generator_trains_and_samples_per_sample() -> None:
    """gen_norm="batch": the generator has batch norm (the critic never does); sampling uses the running
    statistics, so a sample does not depend on what else is in its batch, and the EMA copy gets the buffers."""
    torch.manual_seed(0)
    m = _tiny(loss="r3gan", n_critic=1, gen_norm="batch")
    assert any(isinstance(mod, torch.nn.BatchNorm2d) for mod in m.generator.modules())
    assert not any(isinstance(mod, torch.nn.BatchNorm2d) for mod in m.critic.modules())
    opts = m.configure_optimizers(SimpleNamespace(lr=1e-4, betas=(0.0, 0.99), weight_decay=0.0))
    for step in range(3):
        out = m.train_step((_images(8, step), torch.zeros(8, dtype=torch.long)), opts, step, Hooks(opts))
        assert math.isfinite(float(out.loss))
    assert m.generator.training  # generate() restores the mode it found
    assert torch.equal(m.ema.bn1.running_mean, m.generator.bn1.running_mean)
    a = m.generate(6, generator=torch.Generator().manual_seed(3), ema=False)
    b = m.generate(2, generator=torch.Generator().manual_seed(3), ema=False)
    assert torch.allclose(a[:2], b, atol=1e-6) and m.generator.training
    with pytest.raises(ValueError, match="gen_norm"):
        GANConfig(gen_norm="layer")
