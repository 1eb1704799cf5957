"""The flow family: flow-matching math against closed forms, the ODE samplers, adaLN-Zero, export round trip."""
from __future__ import annotations

import math

import pytest
import torch

from genloom import export
from genloom.models.autoencoder import Autoencoder, AutoencoderConfig
from genloom.models.dit import DiT, DiTBlock
from genloom.errors import GenloomError
from genloom.models.flow import (FlowConfig, FlowModel, ReflowBatch, flow_matching_loss, guidance_at, integrate,
                                 logit_normal, network_evaluations, reflow_loss, time_grid)


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


def _train_on(m: FlowModel, batch, *, steps: int, noise_seed: int, ema: bool = False) -> tuple[float, float]:
    """(loss before, loss after) ``steps`` Adam steps on one fixed batch, each loss at the same fixed noise."""
    opt = torch.optim.Adam(m.dit.parameters(), lr=3e-3)

    def loss_at_fixed_noise() -> float:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(noise_seed)
            return float(m.loss(batch).loss)

    before = loss_at_fixed_noise()
    for _ in range(steps):
        opt.zero_grad()
        m.loss(batch).loss.backward()
        opt.step()
        if ema:
            m.update_ema(len(batch[0]))
    return before, loss_at_fixed_noise()


def test_flow_training_step_lowers_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    m = FlowModel(FlowConfig(ae_channels=2, ae_dim=8, dim=32, depth=2, heads=2, num_classes=10))
    batch = (torch.randn(32, 2, 7, 7), torch.full((32, 2, 7, 7), 0.05), torch.randint(0, 10, (32,)))
    before, after = _train_on(m, batch, steps=60, noise_seed=123, ema=True)
    assert after < 0.9 * before
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


def test_guidance_interval_applies_w_only_inside_it():
    assert guidance_at(0.7, 3.0, (0.5, 1.0)) == 3.0 and guidance_at(0.3, 3.0, (0.5, 1.0)) == 1.0
    assert guidance_at(0.3, 0.0, (0.5, 1.0)) == 0.0  # unconditional stays unconditional
    m = _tiny_flow()
    noise, y = torch.randn(4, 2, 7, 7), torch.tensor([1, 2, 3, 4])
    kw = {"labels": y, "steps": 3, "sampler": "euler"}
    full = m.sample_latents(noise, guidance=3.0, guidance_interval=(0.0, 1.0), **kw)
    c = m.config  # the file's interval is the default
    assert torch.equal(m.sample_latents(noise, guidance=3.0, **kw),
                       m.sample_latents(noise, guidance=3.0, guidance_interval=(c.guidance_t_min, c.guidance_t_max),
                                        **kw))
    # Euler never evaluates at t = 0: an interval [0, 0] is the conditional sampler (w = 1) throughout
    assert torch.equal(m.sample_latents(noise, guidance=3.0, guidance_interval=(0.0, 0.0), **kw),
                       m.sample_latents(noise, guidance=1.0, **kw))
    # [0.5, 1]: guided at t = 1 and 2/3, conditional at t = 1/3 — neither of the two
    part = m.sample_latents(noise, guidance=3.0, guidance_interval=(0.5, 1.0), **kw)
    assert not torch.equal(part, full) and not torch.equal(part, m.sample_latents(noise, guidance=1.0, **kw))
    with pytest.raises(ValueError, match="interval"):
        FlowConfig(guidance_t_min=0.6, guidance_t_max=0.4)


def test_reflow_straightens_the_paths_so_one_euler_step_lands_on_the_teachers_endpoint():
    """Teacher: the exact velocity field of N(μ, diag s²) data (closed form above). Its paths are curved, and one
    Euler step from t = 1 lands every sample on μ. A student trained with ``reflow_loss`` on (ε, teacher ODE(ε))
    pairs must reach the teacher's many-step endpoint in one step."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    mu, s2 = torch.tensor([1.0, -1.0], dtype=torch.float64), torch.tensor([0.25, 4.0], dtype=torch.float64)
    v_star, _ = _optimal_velocity(mu, s2)  # type: ignore[arg-type]

    def teacher(eps: torch.Tensor, steps: int, method: str) -> torch.Tensor:
        return integrate(v_star, eps.double(), time_grid(steps).double(), method=method).float()

    eps = torch.randn(4096, 2, generator=g)
    pairs = ReflowBatch(eps, teacher(eps, 100, "heun"), torch.zeros(4096, dtype=torch.long))
    assert torch.allclose(pairs.target.double(), mu + s2.sqrt() * eps.double(), atol=1e-3)  # the exact map
    net = torch.nn.Sequential(torch.nn.Linear(3, 64), torch.nn.SiLU(), torch.nn.Linear(64, 64), torch.nn.SiLU(),
                              torch.nn.Linear(64, 2))

    def student(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return net(torch.cat([x, t.reshape(-1, 1).expand(len(x), 1).to(x.dtype)], 1))

    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(600):
        idx = torch.randint(0, 4096, (256,), generator=g)
        loss = reflow_loss(student, pairs.noise[idx], pairs.target[idx], torch.rand(256, generator=g)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    test = torch.randn(1000, 2, generator=g)
    want = teacher(test, 100, "heun")
    with torch.no_grad():
        one_student = integrate(student, test, time_grid(1), method="euler")
    one_teacher = teacher(test, 1, "euler")
    err_student = float((one_student - want).pow(2).sum(1).mean())
    err_teacher = float((one_teacher - want).pow(2).sum(1).mean())  # ≈ E‖s·ε‖² = 4.25
    assert err_teacher > 3.5 and err_student < 0.05 * err_teacher


def test_reflow_loss_of_the_model_trains_on_pairs():
    torch.manual_seed(0)
    m = FlowModel(FlowConfig(ae_channels=2, ae_dim=8, dim=32, depth=2, heads=2, num_classes=10))
    batch = ReflowBatch(torch.randn(32, 2, 7, 7), torch.randn(32, 2, 7, 7), torch.randint(0, 11, (32,)))
    before, after = _train_on(m, batch, steps=40, noise_seed=5)
    assert after < 0.8 * before


def test_reflow_pairs_are_the_teachers_samples_of_their_noise():
    m = _tiny_flow()
    pairs = m.reflow_pairs(40, generator=torch.Generator().manual_seed(3), uncond_frac=0.25, batch_size=16)
    assert pairs.noise.shape == pairs.target.shape == (40, 2, 7, 7)
    cond = pairs.labels < 10
    assert 0 < int((~cond).sum()) < 40
    i = int(torch.nonzero(cond)[0])
    j = int(torch.nonzero(~cond)[0])
    want_c = m.sample_latents(pairs.noise[i:i + 1], labels=pairs.labels[i:i + 1])
    want_u = m.sample_latents(pairs.noise[j:j + 1], guidance=0.0)
    assert torch.allclose(pairs.target[i:i + 1], want_c, atol=1e-5)
    assert torch.allclose(pairs.target[j:j + 1], want_u, atol=1e-5)


def test_distill_recipe_writes_a_few_step_student_file(tmp_path):
    import genloom

    teacher = _tiny_flow()
    teacher.latent_std.copy_(torch.tensor([1.5, 0.7]))
    tpath = export.save(teacher, tmp_path / "teacher.safetensors")
    out = genloom.train("flow", out=tmp_path / "student", teacher=tpath, steps=4, batch_size=16, distill_pairs=48,
                        distill_steps=2, teacher_guidance=2.5, teacher_guidance_interval="0,0.75", threads=1, precision="fp32", no_tensorboard=True)
    student = export.load(out["model"])
    c = student.config
    assert (c.sampler, c.sample_steps, c.guidance, c.distill_guidance) == ("euler", 2, 1.0, 2.5)
    assert (c.dim, c.depth, c.ae_channels) == (teacher.config.dim, teacher.config.depth, 2)
    assert torch.equal(student.latent_std, teacher.latent_std)
    assert torch.equal(student.decoder.net[0].weight, teacher.decoder.net[0].weight)
    assert not torch.equal(student.dit.out.weight, teacher.ema.out.weight)  # trained from the teacher's weights
    prov = export.read_header(out["model"]).provenance
    assert prov["distill"] == "reflow" and prov["pairs"] == 48 and prov["teacher_steps"] == 3
    assert prov["teacher_guidance_interval"] == [0.0, 0.75]
    # the file's defaults are the few-step sampler: 2 Euler evaluations of one B-row batch each
    calls = []
    student.ema.register_forward_hook(lambda mod, inp, o: calls.append(len(inp[0])))
    student.generate(5, generator=torch.Generator().manual_seed(0))
    assert calls == [5, 5]
    with pytest.raises(GenloomError, match="--teacher"):
        genloom.train("flow", out=tmp_path / "x", distill_steps=2, steps=1)
    with pytest.raises(GenloomError, match="--dim does not apply"):
        genloom.train("flow", out=tmp_path / "y", teacher=tpath, dim=64, steps=1)
    with pytest.raises(GenloomError, match="LO,HI"):
        genloom.train("flow", out=tmp_path / "w", teacher=tpath, teacher_guidance_interval="0.75", steps=1)
    with pytest.raises(GenloomError, match="already a distilled student"):
        genloom.train("flow", out=tmp_path / "z", teacher=out["model"], steps=1, distill_pairs=16,
                      batch_size=16, precision="fp32", no_tensorboard=True)


def test_train_flow_runs_both_stages_and_exports_one_file(tmp_path, idx_dir):
    """`genloom train flow` from images: the autoencoder stage, then the DiT, one self-describing file."""
    import genloom

    out = genloom.train("flow", out=tmp_path / "run", data=idx_dir, subset=128, ae_epochs=1, steps=3,
                        batch_size=32, ae_dim=8, dim=16, depth=1, threads=1, precision="fp32",
                        no_tensorboard=True, no_progress=True)
    assert out["autoencoder_seconds"] > 0 and out["total_train_seconds"] >= out["autoencoder_seconds"]
    prov = export.read_header(out["model"]).provenance
    assert prov["autoencoder"] == "trained in this run" and prov["total_train_seconds"] == out["total_train_seconds"]
    m = export.load(out["model"])
    assert (m.config.dim, m.config.depth) == (16, 1)
    imgs = m.generate(3, generator=torch.Generator().manual_seed(0), labels=torch.tensor([0, 1, 2]))
    assert imgs.shape == (3, 1, 28, 28) and 0 <= float(imgs.min()) and float(imgs.max()) <= 1
    assert (tmp_path / "run" / "samples" / "final.png").is_file()
    assert not list((tmp_path / "run").rglob("events.out.tfevents*"))  # --no-tensorboard reaches both stages


def test_a_file_of_the_wrong_kind_is_named_with_the_file_to_pass(tmp_path, capsys):
    """--teacher takes a flow file and --autoencoder an autoencoder file: anything else is one line, exit 2."""
    from genloom.cli import main

    ae = export.save(Autoencoder(AutoencoderConfig(channels=2, dim=8)), tmp_path / "ae.safetensors")
    assert main(["train", "flow", "--teacher", str(ae), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--teacher" in err and "'autoencoder' model, not a flow model" in err and "OUT/model.safetensors" in err
    flow = export.save(FlowModel(FlowConfig(ae_channels=2, ae_dim=8, dim=16, depth=1, heads=2)),
                       tmp_path / "flow.safetensors")
    assert main(["train", "flow", "--autoencoder", str(flow), "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert "'flow' model, not an autoencoder" in err and "OUT/autoencoder/model.safetensors" in err


def test_unconditional_takes_its_measured_defaults_and_flags_still_win():
    from genloom.api import train_args
    from genloom.recipes import flow as recipe
    from genloom.recipes.common import train_config

    def resolved(**opts):
        args = train_args("flow", out="x", **opts)
        tc = train_config(args, recipe)
        return tc.batch_size, tc.lr, recipe.ae_frac(args)

    assert resolved() == (64, 2e-3, 0.3)  # class-conditional: the defaults
    assert resolved(unconditional=True) == (128, 3e-3, 0.15)
    assert resolved(unconditional=True, batch_size=32, lr=1e-3, ae_frac=0.4) == (32, 1e-3, 0.4)
    assert resolved(unconditional=True, preset="fast")[:2] == (128, 3e-3)
    steps = {opts.get("unconditional", False): recipe.model_options(train_args("flow", out="x", **opts))["sample_steps"]
             for opts in ({}, {"unconditional": True})}
    assert steps == {False: 4, True: 8}  # the label-free model samples with 8 Heun steps by default
    assert recipe.model_options(train_args("flow", out="x", unconditional=True, sample_steps=2))["sample_steps"] == 2
    levels = {opts.get("unconditional", False): recipe.model_options(train_args("flow", out="x", **opts))
              ["shortcut_levels"] for opts in ({}, {"unconditional": True})}
    assert levels == {False: 0, True: 6}  # the label-free model is a shortcut model (4-step sampling)
    assert recipe.model_options(train_args("flow", out="x", unconditional=True, shortcut_levels=0))[
        "shortcut_levels"] == 0


def test_preset_fast_trains_the_small_patch_4_model(tmp_path, idx_dir):
    """--preset fast: the architecture its sampling speed was measured on (docs/benchmarks.md)."""
    import genloom

    out = genloom.train("flow", preset="fast", out=tmp_path / "run", data=idx_dir, subset=128, ae_epochs=1,
                        steps=2, time_budget=4, batch_size=32, threads=1, precision="fp32", no_tensorboard=True,
                        no_progress=True)
    c = export.load(out["model"]).config
    assert (c.dim, c.depth, c.patch, c.ae_dim) == (64, 4, 4, 16)


# -- shortcut models ------------------------------------------------------------------------------------------
def test_shortcut_targets_are_two_half_steps_of_the_next_level():
    """On dx/dt = λx the exact average velocity over a step d (x_{t−d} = x_t − d·s) is s_d(x) = x(1 − e^{−λd})/d.
    A net answering exactly that at level k + 1 (step d/2) makes every target the exact s_d at level k: the half
    steps are taken at the right level, times and sizes."""
    from genloom.models.flow import shortcut_targets

    lam, L = 1.3, 6

    def net(x, t, y, level):
        d = torch.pow(2.0, -level.float()).reshape(-1, 1, 1, 1)
        return x * (1 - torch.exp(-lam * d)) / d

    torch.manual_seed(0)
    z0, eps = torch.randn(512, 2, 7, 7), torch.randn(512, 2, 7, 7)
    xt, t, k, target = shortcut_targets(net, z0, eps, torch.zeros(512, dtype=torch.long), L)
    assert int(k.min()) == 0 and int(k.max()) == L - 2  # every level but the finest (flow matching's)
    d = torch.pow(2.0, -k.float())
    steps_from_noise = (1 - t) / d
    assert torch.allclose(steps_from_noise, steps_from_noise.round(), atol=1e-5) and float(t.min()) > 0
    assert float(t.max()) == 1.0  # the grid the k-level sampler visits, which starts at pure noise
    assert torch.allclose(xt, (1 - t).reshape(-1, 1, 1, 1) * z0 + t.reshape(-1, 1, 1, 1) * eps)
    dd = d.reshape(-1, 1, 1, 1)
    assert torch.allclose(target, xt * (1 - torch.exp(-lam * dd)) / dd, atol=1e-5)


def test_the_shortcut_sampler_takes_2k_steps_at_level_k_on_the_uniform_grid():
    """steps = 2^k: 2^k evaluations at level k, at t = 1, 1 − 2^−k, …, 2^−k whatever the file's time shift;
    the ODE samplers call the finest level (the velocity). Bad settings are refused with the fix."""
    torch.manual_seed(0)
    m = FlowModel(FlowConfig(ae_channels=2, ae_dim=8, dim=16, depth=1, heads=2, num_classes=0, time_shift=3.0,
                             shortcut_levels=4)).eval()
    calls: list[tuple[float, int]] = []
    net = m.ema.forward

    def spy(z, t, y, level=None):
        calls.append((round(float(t[0]), 6), -1 if level is None else int(level[0])))
        return net(z, t, y, level)

    m.ema.forward = spy  # type: ignore[method-assign]
    m.generate(2, steps=4, sampler="shortcut")
    assert calls == [(1.0, 2), (0.75, 2), (0.5, 2), (0.25, 2)]
    calls.clear()
    m.generate(2, steps=2, sampler="euler")
    assert [lv for _, lv in calls] == [-1, -1] and calls[1][0] != 0.5  # the shifted grid, the velocity level
    assert network_evaluations(8, "shortcut") == 8
    for steps in (3, 16):  # not a power of two; more than the finest level's 2^(L−1) = 8
        with pytest.raises(ValueError, match="power of two of steps, 1 … 8"):
            m.generate(1, steps=steps, sampler="shortcut")
    with pytest.raises(ValueError, match="needs a shortcut model"):
        _tiny_flow().generate(1, steps=2, sampler="shortcut")
    with pytest.raises(ValueError, match="shortcut_levels must be 0"):
        FlowConfig(shortcut_levels=1)


def test_a_shortcut_model_learns_one_step_samples_that_flow_matching_blurs():
    """Data ±1 (a fair coin per latent dim). One Euler step of the flow-matching velocity lands on the mean
    (E[z₀ | ε] = 0: blurred); the shortcut model's one-step level, trained by self-consistency from the same
    velocity, lands near ±1 (the ODE's map, sign(ε) per dim)."""
    torch.manual_seed(0)
    cfg = FlowConfig(ae_channels=1, ae_dim=8, dim=32, depth=2, heads=2, num_classes=0, shortcut_levels=5,
                     ema_kimg=0.5, ema_rampup=0.0)
    m = FlowModel(cfg)
    opt = torch.optim.Adam(m.dit.parameters(), lr=3e-3)
    for _ in range(400):
        sign = torch.randint(0, 2, (64, 1, 7, 7)).float() * 2 - 1
        batch = (sign, torch.full((64, 1, 7, 7), 0.01), torch.zeros(64).long())
        opt.zero_grad()
        m.loss(batch).loss.backward()
        opt.step()
        m.update_ema(64)
    one = m.loss((torch.ones(1, 1, 7, 7), torch.full((1, 1, 7, 7), 0.01), torch.zeros(1).long()))
    assert torch.isfinite(one.loss) and one.n == 1  # too small a batch to split: flow matching alone
    noise = torch.randn(256, 1, 7, 7, generator=torch.Generator().manual_seed(1))
    m.eval()
    flow1 = m.sample_latents(noise, steps=1, sampler="euler").abs()
    short1 = m.sample_latents(noise, steps=1, sampler="shortcut").abs()
    many = m.sample_latents(noise, steps=16, sampler="shortcut").abs()
    assert float(flow1.mean()) < 0.5, float(flow1.mean())  # the mean of the two modes: blurred
    assert float(short1.mean()) > 0.75, float(short1.mean())  # a mode
    assert float(many.mean()) > 0.75, float(many.mean())
