"""The flow family: flow-matching math against closed forms, the ODE samplers, adaLN-Zero, export round trip."""
from __future__ import annotations

import math

import pytest
import torch

from genloom import export
from genloom.models.autoencoder import Autoencoder, AutoencoderConfig
from genloom.models.dit import DiT, DiTBlock
from genloom.models.flow import (FlowConfig, FlowModel, flow_matching_loss, integrate, logit_normal,
                                 network_evaluations, time_grid)


def _optimal_velocity(mu: float, s2: float):
    """z₀ ~ N(μ, s²I), ε ~ N(0, I), x_t = (1 − t)z₀ + tε. Jointly Gaussian, so
    v*(x, t) = E[ε − z₀ | x_t = x] = −μ + c(t)/a(t)·(x − (1 − t)μ),  a = (1 − t)²s² + t²,  c = t − (1 − t)s²,
    and the minimum of the loss per dim is Var(ε − z₀ | x_t) = 1 + s² − c²/a."""
    def v(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(-1, *([1] * (x.dim() - 1)))
        a = (1 - t) ** 2 * s2 + t ** 2
        c = t - (1 - t) * s2
        return -mu + c / a * (x - (1 - t) * mu)

    def min_loss(t: torch.Tensor) -> torch.Tensor:
        a = (1 - t) ** 2 * s2 + t ** 2
        c = t - (1 - t) * s2
        return 1 + s2 - c ** 2 / a

    return v, min_loss


def test_flow_matching_loss_matches_the_closed_form_on_a_gaussian():
    g = torch.Generator().manual_seed(0)
    mu, s2, n, d = 1.5, 0.25, 20000, 4
    v_star, min_loss = _optimal_velocity(mu, s2)
    z0 = mu + math.sqrt(s2) * torch.randn(n, d, generator=g, dtype=torch.float64)
    eps = torch.randn(n, d, generator=g, dtype=torch.float64)
    for t0 in (0.1, 0.5, 0.9):
        t = torch.full((n,), t0, dtype=torch.float64)
        got = flow_matching_loss(v_star, z0, eps, t).mean()
        want = min_loss(torch.tensor(t0, dtype=torch.float64))
        assert got == pytest.approx(float(want), rel=0.03)
        # the optimum is a minimum: any other field (here shifted) has a larger loss
        worse = flow_matching_loss(lambda x, tt: v_star(x, tt) + 0.3, z0, eps, t).mean()
        assert worse > got + 0.08
    # v = 0 gives E‖ε − z₀‖²/d = 1 + s² + μ², whatever t is
    t = logit_normal(n, generator=g).double()
    zero = flow_matching_loss(lambda x, tt: torch.zeros_like(x), z0, eps, t).mean()
    assert zero == pytest.approx(1 + s2 + mu ** 2, rel=0.03)


def test_logit_normal_time_is_in_the_open_interval_and_centred():
    t = logit_normal(50000, generator=torch.Generator().manual_seed(1))
    assert 0 < float(t.min()) and float(t.max()) < 1
    assert float(t.median()) == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("method,steps,tol", [("euler", 500, 1e-2), ("heun", 40, 1e-3)])
def test_samplers_integrate_a_linear_ode(method, steps, tol):
    # dx/dt = a·x from t = 1 to t = 0: x(0) = x(1)·e^(−a)
    a = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    x1 = torch.tensor([[1.0, 2.0, -0.5]], dtype=torch.float64)
    got = integrate(lambda x, t: a * x, x1, time_grid(steps).double(), method=method)
    want = x1 * torch.exp(-a)
    assert torch.allclose(got, want, rtol=tol, atol=0)


def test_heun_is_second_order_and_counts_evaluations():
    a = torch.tensor([1.5], dtype=torch.float64)
    x1 = torch.ones(1, 1, dtype=torch.float64)
    err = {}
    for steps in (10, 20):
        calls = []

        def f(x, t):
            calls.append(1)
            return a * x

        got = integrate(f, x1, time_grid(steps).double(), method="heun")
        err[steps] = float((got - x1 * torch.exp(-a)).abs())
        assert len(calls) == network_evaluations(steps, "heun") == 2 * steps
    assert err[10] / err[20] > 3.0  # halving h divides a second-order error by ~4


def test_time_grid_runs_from_noise_to_data_and_shift_moves_steps_towards_noise():
    ts = time_grid(4)
    assert float(ts[0]) == 1.0 and float(ts[-1]) == 0.0 and bool((ts[1:] < ts[:-1]).all())
    assert float(time_grid(4, shift=3.0)[2]) > float(ts[2])


def test_adaln_zero_blocks_start_as_identity_and_the_dit_predicts_zero():
    torch.manual_seed(0)
    blk = DiTBlock(32, 4, tokens=16)
    x, c = torch.randn(3, 16, 32), torch.randn(3, 32)
    assert torch.equal(blk(x, c), x)
    net = DiT(in_channels=4, size=7, patch=2, dim=32, depth=2, heads=4, num_classes=10)
    z = torch.randn(3, 4, 7, 7)
    v = net(z, torch.rand(3), torch.tensor([0, 5, 10]))
    assert v.shape == z.shape and torch.equal(v, torch.zeros_like(z))


@pytest.mark.parametrize("patch", [1, 2, 7])
def test_dit_patching_round_trips_shapes_and_positions(patch):
    torch.manual_seed(0)
    net = DiT(in_channels=3, size=7, patch=patch, dim=16, depth=1, heads=2, num_classes=0)
    torch.nn.init.normal_(net.out.weight)  # non-zero output so that every latent position gets a value
    v = net(torch.randn(2, 3, 7, 7), torch.rand(2), torch.zeros(2, dtype=torch.long))
    assert v.shape == (2, 3, 7, 7) and bool(torch.isfinite(v).all())


def _tiny_flow(num_classes: int = 10) -> FlowModel:
    torch.manual_seed(0)
    m = FlowModel(FlowConfig(ae_channels=2, ae_dim=8, dim=16, depth=1, heads=2, num_classes=num_classes,
                             sample_steps=3))
    for p in m.parameters():  # non-trivial weights everywhere (the zero-initialised layers too)
        torch.nn.init.normal_(p, std=0.1)
    m.ema.load_state_dict(m.dit.state_dict())
    return m.eval()


def test_guidance_zero_is_unconditional_and_one_is_conditional():
    m = _tiny_flow()
    x, t = torch.randn(4, 2, 7, 7), torch.tensor(0.3)
    y = torch.tensor([1, 2, 3, 4])
    null = torch.full((4,), 10)
    tt = torch.full((4,), 0.3)
    assert torch.allclose(m.velocity(m.dit, x, t, y, 0.0), m.dit(x, tt, null))
    assert torch.allclose(m.velocity(m.dit, x, t, y, 1.0), m.dit(x, tt, y))
    w = 2.5
    want = m.dit(x, tt, null) + w * (m.dit(x, tt, y) - m.dit(x, tt, null))
    assert torch.allclose(m.velocity(m.dit, x, t, y, w), want, atol=1e-6)


def test_export_load_sample_is_seed_identical(tmp_path):
    m = _tiny_flow()
    m.latent_mean.copy_(torch.tensor([0.2, -0.1]))
    m.latent_std.copy_(torch.tensor([1.5, 0.7]))
    path = export.save(m, tmp_path / "model.safetensors")
    back = export.load(path)
    assert back.kind == "flow" and back.config == m.config
    for kw in ({}, {"steps": 2, "sampler": "euler", "guidance": 3.0, "labels": torch.arange(5) % 10}):
        a = m.generate(5, generator=torch.Generator().manual_seed(7), **kw)
        b = back.generate(5, generator=torch.Generator().manual_seed(7), **kw)
        assert a.shape == (5, 1, 28, 28) and torch.equal(a, b)
    c = back.generate(5, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(c, b)


def test_flow_training_step_lowers_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    m = FlowModel(FlowConfig(ae_channels=2, ae_dim=8, dim=32, depth=2, heads=2, num_classes=10))
    opt = torch.optim.Adam(m.dit.parameters(), lr=3e-3)
    batch = (torch.randn(32, 2, 7, 7), torch.full((32, 2, 7, 7), 0.05), torch.randint(0, 10, (32,)))

    def loss_at_fixed_noise() -> float:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(123)
            return float(m.loss(batch).loss)

    before = loss_at_fixed_noise()
    for _ in range(60):
        opt.zero_grad()
        m.loss(batch).loss.backward()
        opt.step()
        m.update_ema(32)
    assert loss_at_fixed_noise() < 0.9 * before
    assert not torch.equal(m.ema.out.weight, torch.zeros_like(m.ema.out.weight))  # the EMA follows


def test_autoencoder_losses_and_adversarial_phase():
    torch.manual_seed(0)
    ae = Autoencoder(AutoencoderConfig(channels=2, dim=8, critic_dim=8, adv_start=1))
    opts = ae.configure_optimizers(type("T", (), {"lr": 1e-3, "betas": (0.9, 0.99)})())

    class Hooks:
        def clip_and_step(self, name, loss, params=None):
            opts[name].zero_grad()
            loss.backward()
            opts[name].step()
            return 0.0

    x = torch.rand(8, 1, 28, 28)
    critic_before = [p.detach().clone() for p in ae.critic.parameters()]
    out0 = ae.train_step((x, None), opts, 0, Hooks())  # before adv_start: the critic does not move
    assert "d_loss" not in out0.metrics
    assert all(torch.equal(a, b) for a, b in zip(critic_before, ae.critic.parameters()))
    out1 = ae.train_step((x, None), opts, 1, Hooks())
    assert {"d_loss", "g_adv", "recon", "kl"} <= set(out1.metrics)
    assert not all(torch.equal(a, b) for a, b in zip(critic_before, ae.critic.parameters()))
    mu, logvar = ae.encode(x)
    assert mu.shape == logvar.shape == (8, 2, 7, 7)
    assert ae.decode(mu).shape == (8, 1, 28, 28)
