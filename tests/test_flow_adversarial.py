"""The flow family's adversarial few-step stage: a copy of the shortcut network fine-tuned as an n-step generator
against a critic on real images, with a regression on the teacher's latents (models/flow.py, recipes/flow.py)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from genloom import export
from genloom.errors import GenloomError
from genloom.models.flow import AdversarialBatch, FlowConfig, FlowModel


def _tiny(adv_steps: int = 4, **kw) -> FlowModel:
    torch.manual_seed(0)
    m = FlowModel(FlowConfig(ae_channels=2, ae_dim=8, dim=16, depth=1, heads=2, num_classes=0, shortcut_levels=3,
                             adv_steps=adv_steps, **kw))
    for p in m.parameters():  # non-trivial weights everywhere (the zero-initialised layers too)
        torch.nn.init.normal_(p, std=0.1)
    m.ema.load_state_dict(m.dit.state_dict())
    if adv_steps:
        m.start_adversarial()
    return m.eval()


class _Hooks:
    def __init__(self, opts):
        self.opts = opts

    def clip_and_step(self, name, loss, params=None):
        self.opts[name].zero_grad()
        loss.backward()
        self.opts[name].step()
        return 0.0


def test_few_step_is_the_shortcut_sampler_and_backpropagates_through_the_last_steps_only():
    m = _tiny()
    noise = torch.randn(3, 2, 7, 7)
    with torch.no_grad():
        want = m.sample_latents(noise, sampler="shortcut", steps=2)  # not adv_steps: the teacher
        assert torch.allclose(m.few_step(m.ema, noise, 2), want, atol=1e-6)
    # grad_steps=1: the gradient is that of the last step alone, taken at the (constant) state before it
    with torch.no_grad():
        x = noise - 0.5 * m.adv(noise, torch.full((3,), 1.0), torch.zeros(3, dtype=torch.long),
                                torch.full((3,), 1, dtype=torch.long))
    last = x - 0.5 * m.adv(x, torch.full((3,), 0.5), torch.zeros(3, dtype=torch.long),
                           torch.full((3,), 1, dtype=torch.long))
    (g_want,) = torch.autograd.grad(last.square().sum(), m.adv.out.weight)
    (g_got,) = torch.autograd.grad(m.few_step(m.adv, noise, 2, grad_steps=1).square().sum(), m.adv.out.weight)
    assert torch.allclose(g_got, g_want, atol=1e-5)
    (g_all,) = torch.autograd.grad(m.few_step(m.adv, noise, 2, grad_steps=2).square().sum(), m.adv.out.weight)
    assert not torch.allclose(g_all, g_want, atol=1e-5)  # through both steps: a different gradient


def test_the_adversarial_step_trains_generator_and_critic_and_never_the_teacher():
    m = _tiny().train()
    opts = m.configure_optimizers(type("T", (), {"lr": 1e-3})())
    assert set(opts) == {"adv", "critic"}
    frozen = {k: v.clone() for k, v in m.state_dict().items() if k.startswith(("dit.", "ema.", "decoder."))}
    gen0 = m.adv.out.weight.detach().clone()
    ema0 = m.adv_ema.out.weight.detach().clone()
    crit0 = [p.detach().clone() for p in m.critic.parameters()]
    batch = AdversarialBatch(torch.rand(8, 1, 28, 28), torch.randn(8, 2, 7, 7), torch.randn(8, 2, 7, 7))
    out = m.train_step(batch, opts, 0, _Hooks(opts))
    assert {"d_loss", "g_adv", "reg", "penalty"} <= set(out.metrics) and torch.isfinite(out.loss)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in frozen.items())
    assert not torch.equal(m.adv.out.weight, gen0) and not torch.equal(m.adv_ema.out.weight, ema0)
    assert not all(torch.equal(a, b) for a, b in zip(crit0, m.critic.parameters()))
    assert float(m.adv_images) == 8


def test_the_regression_alone_pulls_the_generator_onto_the_teachers_latents():
    """adv_loss_weight 0: plain regression on the coupling — the loss must fall on a fixed batch."""
    m = _tiny(adv_loss_weight=0.0).train()
    opts = m.configure_optimizers(type("T", (), {"lr": 3e-3})())
    batch = AdversarialBatch(torch.rand(16, 1, 28, 28), torch.randn(16, 2, 7, 7), 0.5 * torch.randn(16, 2, 7, 7))
    first = float(m.train_step(batch, opts, 0, _Hooks(opts)).metrics["reg"])
    for i in range(60):
        last = float(m.train_step(batch, opts, i + 1, _Hooks(opts)).metrics["reg"])
    assert last < 0.5 * first


def test_the_shortcut_sampler_at_adv_steps_runs_the_generator_and_the_file_round_trips(tmp_path):
    m = _tiny()
    with torch.no_grad():
        for p in m.adv_ema.parameters():
            p.add_(0.05 * torch.randn_like(p))
    plain = FlowModel(dataclasses.replace(m.config, adv_steps=0)).eval()
    plain.load_state_dict(m.state_dict(), strict=False)  # the same teacher, no generator
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    kw = {"sampler": "shortcut", "steps": 4}
    assert not torch.allclose(m.generate(4, generator=g(), **kw), plain.generate(4, generator=g(), **kw))
    for other in ({"sampler": "shortcut", "steps": 2}, {"sampler": "heun", "steps": 3}):
        assert torch.equal(m.generate(4, generator=g(), **other), plain.generate(4, generator=g(), **other))
    back = export.load(export.save(m, tmp_path / "m.safetensors"))
    assert back.config.adv_steps == 4
    assert torch.equal(back.generate(4, generator=g(), **kw), m.generate(4, generator=g(), **kw))


def test_adv_steps_must_be_a_shortcut_step_count_of_the_model():
    with pytest.raises(ValueError, match="power of two"):
        FlowConfig(num_classes=0, shortcut_levels=3, adv_steps=3)
    with pytest.raises(ValueError, match="shortcut model"):
        FlowConfig(num_classes=0, adv_steps=4)
    with pytest.raises(ValueError, match="adv_grad_steps"):
        FlowConfig(num_classes=0, shortcut_levels=3, adv_steps=4, adv_grad_steps=0)
    assert dataclasses.replace(FlowConfig(), num_classes=0, shortcut_levels=3, adv_steps=4).adv_steps == 4


def test_train_flow_adv_frac_trains_the_denoiser_then_the_generator(tmp_path, idx_dir):
    """One command: autoencoder, DiT (OUT/denoiser), teacher pairs, adversarial stage — one file with both."""
    import genloom

    out = genloom.train("flow", out=tmp_path / "run", data=idx_dir, subset=128, ae_epochs=1, steps=6,
                        batch_size=32, ae_dim=8, dim=16, depth=1, threads=1, precision="fp32", unconditional=True,
                        shortcut_levels=3, adv_frac=0.5, adv_pairs=64, no_tensorboard=True, no_progress=True)
    m = export.load(out["model"])
    teacher = export.load(tmp_path / "run" / "denoiser" / "model.safetensors")
    assert m.config.adv_steps == 4 and teacher.config.adv_steps == 0
    # the file samples with the generator by default (4 evaluations), the denoiser's with 8 Heun steps
    assert (m.config.sampler, m.config.sample_steps) == ("shortcut", 4)
    assert (teacher.config.sampler, teacher.config.sample_steps) == ("heun", 8)
    assert torch.equal(m.ema.out.weight, teacher.ema.out.weight)  # the teacher is frozen in the second stage
    assert not torch.equal(m.adv_ema.out.weight, teacher.ema.out.weight)  # the generator trained from it
    prov = export.read_header(out["model"]).provenance
    assert prov["denoiser_steps"] == 3 and prov["steps"] == 3 and prov["pair_seconds"] >= 0
    assert prov["adversarial"]["adv_frac"] == 0.5
    imgs = m.generate(3, generator=torch.Generator().manual_seed(0), sampler="shortcut", steps=4)
    assert imgs.shape == (3, 1, 28, 28) and 0 <= float(imgs.min()) and float(imgs.max()) <= 1
    assert (tmp_path / "run" / "samples" / "final.png").is_file()


@pytest.mark.parametrize("flags, words", [
    (["--adv-frac", "0.3"], ["--adv-frac", "--unconditional"]),
    (["--adv-frac", "1", "--unconditional"], ["--adv-frac must be in"]),
    (["--adv-frac", "0.3", "--unconditional", "--adv-steps", "3"], ["power of two"]),
])
def test_bad_adversarial_flags_are_one_line_errors(tmp_path, idx_dir, capsys, flags, words):
    from genloom.cli import main

    rc = main(["train", "flow", "--data", str(idx_dir), "--subset", "64", "--ae-epochs", "1", "--steps", "2",
               "--ae-dim", "8", "--dim", "16", "--depth", "1", "--out", str(tmp_path / "x"), "--no-progress",
               "--no-tensorboard", *flags])
    err = capsys.readouterr().err
    assert rc == 2 and all(w in err for w in words), err
    assert not (tmp_path / "x" / "denoiser").exists()  # checked before any DiT training


def test_a_label_free_shortcut_run_ends_with_the_adversarial_stage_by_default():
    from genloom.api import train_args
    from genloom.recipes import flow as recipe

    def frac(**opts):
        adv = recipe.adversarial_options(train_args("flow", out="x", **opts))
        return adv and adv["adv_frac"]

    assert frac() is None  # class-conditional: no adversarial stage
    assert frac(unconditional=True) == recipe.UNCONDITIONAL_ADV_FRAC == 0.3
    assert frac(unconditional=True, adv_frac=0.5) == 0.5
    assert frac(unconditional=True, adv_frac=0.0) is None  # off
    assert frac(unconditional=True, shortcut_levels=0) is None  # no shortcut model: nothing to fine-tune
    with pytest.raises(GenloomError, match="add --adv-frac"):
        frac(adv_steps=2)
