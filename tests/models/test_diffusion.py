"""Diffusion models, noise schedules and samplers: shapes, adaLN-Zero at init, stage cuts,
the forward process, parameterisation round trips, samplers against exact denoisers, and
guidance. Pure tests, no process group."""

from __future__ import annotations

import pytest
import torch

from strata.errors import ConfigError
from strata.models.diffusion.config import (
    DiffusionModelConfig,
    NoiseConfig,
    build_diffusion,
)
from strata.models.diffusion.layered import run_layers
from strata.models.diffusion.sampling import (
    ddim_sample,
    ddim_timesteps,
    ddpm_sample,
    guided_prediction,
)
from strata.models.diffusion.schedule import NoiseSchedule

ARCHS = ["dit", "unet"]


def _cfg(arch: str, image_size: int = 8, channels: int = 1, **kw) -> DiffusionModelConfig:
    if arch == "unet":
        kw.setdefault("channel_mults", [1, 2] if image_size <= 8 else [1, 2, 2])
    else:
        kw.setdefault("patch_size", 2 if image_size <= 8 else 4)
    kw = {"hidden": 32, "depth": 2, "heads": 2, **kw}
    return DiffusionModelConfig(arch=arch, image_size=image_size, channels=channels, **kw)


def _perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Move every parameter off its initial value, so zero-initialised layers do something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def _inputs(model, n: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *model.image_shape, generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    y = torch.randint(0, model.num_classes + 1, (n,), generator=g)  # null_label included
    return x, t, y


# ---- models ----------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("image_size,channels", [(8, 1), (32, 3)])
def test_output_has_the_input_shape_and_trains(arch: str, image_size: int, channels: int) -> None:
    torch.manual_seed(0)
    model = _perturbed(build_diffusion(_cfg(arch, image_size, channels)))
    assert model.image_shape == (channels, image_size, image_size)
    assert model.null_label == model.num_classes == 10
    x, t, y = _inputs(model, n=2)
    out = model(x, t, y)
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("arch", ARCHS)
def test_unconditional_model_takes_no_labels(arch: str) -> None:
    model = _perturbed(build_diffusion(_cfg(arch, num_classes=0))).eval()
    assert model.null_label == 0
    x, t, _ = _inputs(model)
    torch.testing.assert_close(model(x, t), model(x, t, torch.zeros(3, dtype=torch.long)), rtol=0, atol=0)
    assert model(x, torch.tensor(5)).shape == x.shape  # a scalar timestep is broadcast


def test_dit_states_between_blocks_are_tokens_and_condition() -> None:
    cfg = _cfg("dit", hidden=32, depth=3)
    model = build_diffusion(cfg)
    assert len(model.layers) == cfg.depth + 2
    x, t, y = _inputs(model, n=2)
    state = (x, t, y)
    for layer in model.layers[:-1]:
        state = layer(state)
        tokens, c = state
        assert tokens.shape == (2, (8 // 2) ** 2, 32) and c.shape == (2, 32)


def test_dit_is_adaln_zero_at_init() -> None:
    """Each block is exactly the identity and the model predicts zero before training."""
    torch.manual_seed(0)
    model = build_diffusion(_cfg("dit", depth=3))
    x, t, y = _inputs(model)
    state = model.layers[0]((x, t, y))
    assert state[0].abs().sum() > 0 and state[1].abs().sum() > 0
    for block in model.layers[1:-1]:
        out = block(state)
        assert all(torch.equal(a, b) for a, b in zip(out, state))
        state = out
    assert torch.equal(model(x, t, y), torch.zeros_like(x))


@pytest.mark.parametrize("arch", ARCHS)
def test_layers_cut_anywhere_give_the_whole_model(arch: str) -> None:
    """What a pipeline does: run a prefix, send the state tuple (copied), run the rest."""
    model = _perturbed(build_diffusion(_cfg(arch, dropout=0.1))).eval()
    x, t, y = _inputs(model)
    whole = model(x, t, y)
    (full,) = run_layers(model.layers, (x, t, y))
    assert torch.equal(full, whole)
    for cut in range(len(model.layers) + 1):
        mid = run_layers(model.layers[:cut], (x, t, y))
        assert isinstance(mid, tuple) and all(isinstance(s, torch.Tensor) for s in mid)
        (out,) = run_layers(model.layers[cut:], tuple(s.detach().clone() for s in mid))
        assert torch.equal(out, whole), f"cut at layer {cut}"


@pytest.mark.parametrize("arch", ARCHS)
def test_dropout_is_the_only_randomness(arch: str) -> None:
    """A trainer replays a step from (x0, t, noise, y) and the torch seed alone."""
    model = _perturbed(build_diffusion(_cfg(arch, dropout=0.2))).train()
    x, t, y = _inputs(model)
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        runs.append(model(x, t, y))
    assert torch.equal(runs[0], runs[1])
    torch.manual_seed(8)
    assert not torch.equal(model(x, t, y), runs[0])


@pytest.mark.parametrize("arch", ARCHS)
def test_a_few_steps_reduce_the_loss(arch: str) -> None:
    torch.manual_seed(0)
    model = build_diffusion(_cfg(arch, hidden=16, depth=1, heads=2, num_classes=2))
    schedule = NoiseSchedule(NoiseConfig(timesteps=100))
    x0 = torch.rand(8, 1, 8, 8).round() * 2 - 1  # binary images in {-1, 1}
    y = torch.arange(8) % 2
    t = torch.randint(0, 100, (8,))
    noise = torch.randn_like(x0)
    x_t, target = schedule.q_sample(x0, t, noise), schedule.target(x0, noise, t)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = schedule.loss(model(x_t, t, y), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses


@pytest.mark.parametrize(
    "kwargs,key",
    [
        ({"arch": "gan"}, "arch"),
        ({"image_size": 9}, "patch_size"),
        ({"hidden": 30, "heads": 4}, "heads"),
        ({"depth": 0}, "depth"),
        ({"num_classes": -1}, "num_classes"),
        ({"dropout": 1.0}, "dropout"),
        ({"mlp_ratio": 0.0}, "mlp_ratio"),
        ({"arch": "unet", "image_size": 6, "channel_mults": [1, 2, 2]}, "channel_mults"),
        ({"arch": "unet", "channel_mults": []}, "channel_mults"),
        ({"arch": "unet", "hidden": 12, "heads": 4, "norm_groups": 8}, "norm_groups"),
    ],
)
def test_model_config_errors_name_the_key(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        DiffusionModelConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs,key",
    [({"schedule": "quadratic"}, "schedule"), ({"timesteps": 1}, "timesteps"), ({"prediction": "x0"}, "prediction")],
)
def test_noise_config_errors_name_the_key(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        NoiseConfig(**kwargs)


# ---- schedules -------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("timesteps", [2, 10, 1000])
def test_alphas_cumprod_strictly_decrease_inside_zero_one(schedule: str, timesteps: int) -> None:
    s = NoiseSchedule(NoiseConfig(schedule=schedule, timesteps=timesteps))
    abar = s.alphas_cumprod
    assert abar.shape == (timesteps,) and abar.dtype == torch.float64
    assert ((s.betas > 0) & (s.betas < 1)).all()
    assert ((abar > 0) & (abar < 1)).all()
    assert (abar[1:] < abar[:-1]).all()
    if timesteps == 1000:  # nearly all signal at the start, nearly none at the end
        assert abar[0] >= 0.9999 - 1e-12 and abar[-1] < 1e-4


def test_linear_schedule_is_ddpm_at_1000_steps() -> None:
    s = NoiseSchedule(NoiseConfig(schedule="linear", timesteps=1000))
    assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_q_sample_has_the_forward_process_moments(schedule: str) -> None:
    s = NoiseSchedule(NoiseConfig(schedule=schedule))
    x0 = torch.tensor([-1.0, -0.3, 0.5, 1.0]).expand(40000, 4)
    g = torch.Generator().manual_seed(0)
    for step in (0, 250, 600, 999):
        t = torch.full((40000,), step)
        x_t = s.q_sample(x0, t, torch.randn(x0.shape, generator=g))
        abar = s.alphas_cumprod[step].item()
        torch.testing.assert_close(x_t.mean(0), abar**0.5 * x0[0], rtol=0, atol=0.03)
        torch.testing.assert_close(x_t.var(0), torch.full((4,), 1 - abar), rtol=0.05, atol=1e-6)


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_parameterisations_round_trip(prediction: str, schedule: str) -> None:
    s = NoiseSchedule(NoiseConfig(schedule=schedule, prediction=prediction))
    g = torch.Generator().manual_seed(0)
    t = torch.arange(1000)  # every timestep, the extremes included
    x0 = torch.rand(1000, 2, 3, 3, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(1000, 2, 3, 3, generator=g, dtype=torch.float64)
    x_t = s.q_sample(x0, t, noise)
    target = s.target(x0, noise, t)
    a = s.alphas_cumprod.sqrt().view(-1, 1, 1, 1)
    expected = noise if prediction == "eps" else a * noise - (1 - a**2).sqrt() * x0
    torch.testing.assert_close(target, expected, rtol=0, atol=1e-12)
    x0_back, eps_back = s.predict_x0_and_eps(target, x_t, t)
    torch.testing.assert_close(x0_back, x0, rtol=0, atol=1e-9)
    torch.testing.assert_close(eps_back, noise, rtol=0, atol=1e-9)
    torch.testing.assert_close(s.eps_from_x0(x0, x_t, t), noise, rtol=0, atol=1e-9)
    # float32 too, away from the last steps where sqrt(abar) is ~1e-4 and divides eps errors
    keep = t < 900
    f = [z[keep].float() for z in (x0, noise, x_t)]
    x0_32, eps_32 = s.predict_x0_and_eps(s.target(f[0], f[1], t[keep]), f[2], t[keep])
    torch.testing.assert_close(x0_32, f[0], rtol=0, atol=1e-4)
    torch.testing.assert_close(eps_32, f[1], rtol=0, atol=1e-4)


def test_schedule_buffers_may_live_elsewhere() -> None:
    s = NoiseSchedule(NoiseConfig()).to("cpu")
    x0 = torch.ones(2, 1, 2, 2)
    out = s.q_sample(x0, torch.tensor([0, 999]), torch.zeros_like(x0))
    assert out.dtype == torch.float32 and out.device == x0.device
    assert s.loss(torch.ones(2, 2, dtype=torch.bfloat16), torch.zeros(2, 2)).dtype == torch.float32


# ---- samplers --------------------------------------------------------------------------


class ExactDenoiser:
    """The optimal predictor for a data set with one fixed image per class (class k -> images[k]).

    A plain callable, not an nn.Module, as a mixture of experts may be.
    """

    def __init__(self, schedule: NoiseSchedule, images: torch.Tensor) -> None:
        self.schedule, self.images = schedule, images
        self.image_shape = tuple(images.shape[1:])
        self.null_label = images.shape[0]

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        x0 = self.images[y if y is not None else torch.zeros_like(t)]
        a = self.schedule.alphas_cumprod.sqrt()[t].float().view(-1, 1, 1, 1)
        s = (1 - self.schedule.alphas_cumprod).sqrt()[t].float().view(-1, 1, 1, 1)
        eps = (x_t - a * x0) / s
        return eps if self.schedule.prediction == "eps" else a * eps - s * x0


class GaussianDenoiser:
    """The optimal predictor for data x0 ~ N(mu, sigma^2 I): E[x0 | x_t] is linear in x_t.

    Unlike a single point, this posterior depends on x_t at every step, so a sampler with a
    wrong noise level or update rule produces the wrong spread.
    """

    def __init__(self, schedule: NoiseSchedule, mu: torch.Tensor, sigma: float) -> None:
        self.schedule, self.mu, self.sigma = schedule, mu, sigma
        self.image_shape = tuple(mu.shape)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        a = self.schedule.alphas_cumprod.sqrt()[t].view(-1, 1, 1, 1)
        s = (1 - self.schedule.alphas_cumprod).sqrt()[t].view(-1, 1, 1, 1)
        gain = a * self.sigma**2 / (a**2 * self.sigma**2 + s**2)
        x0 = self.mu + gain * (x_t.double() - a * self.mu)
        eps = (x_t - a * x0) / s
        out = eps if self.schedule.prediction == "eps" else a * eps - s * x0
        return out.float()


def _sample(sampler: str, model, schedule: NoiseSchedule, n: int, **kw) -> torch.Tensor:
    if sampler == "ddpm":
        return ddpm_sample(model, schedule, n, **kw)
    return ddim_sample(model, schedule, n, steps=50, **kw)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_samplers_return_the_only_image_under_the_exact_denoiser(sampler: str, prediction: str, schedule: str) -> None:
    s = NoiseSchedule(NoiseConfig(schedule=schedule, prediction=prediction))
    images = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 1.8 - 0.9
    y = torch.tensor([0, 1, 1, 0])
    out = _sample(sampler, ExactDenoiser(s, images), s, 4, y=y, generator=torch.Generator().manual_seed(1))
    assert out.shape == (4, 1, 8, 8)
    torch.testing.assert_close(out, images[y], rtol=0, atol=1e-4)


@pytest.mark.parametrize("sampler,eta", [("ddpm", None), ("ddim", 0.0), ("ddim", 1.0)])
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_samplers_reproduce_a_gaussian_data_distribution(sampler: str, eta: float | None, prediction: str) -> None:
    """With every step DDIM's discretisation error is small (with 50 steps on this narrow
    distribution, the spread comes out about 8% low for eta=0 and 16% for eta=1)."""
    s = NoiseSchedule(NoiseConfig(schedule="cosine", prediction=prediction))
    mu = torch.linspace(-0.4, 0.4, 64, dtype=torch.float64).view(1, 8, 8)
    sigma = 0.15
    model, g = GaussianDenoiser(s, mu, sigma), torch.Generator().manual_seed(0)
    if sampler == "ddpm":
        out = ddpm_sample(model, s, 500, generator=g)
    else:
        out = ddim_sample(model, s, 500, steps=1000, eta=eta, generator=g)
    centred = out.double() - mu
    assert centred.mean().abs() < 0.005  # over 32,000 values of spread 0.15
    assert centred.std().item() == pytest.approx(sigma, rel=0.03)
    torch.testing.assert_close(out.double().mean(0), mu, rtol=0, atol=0.025)


def _tiny_dit() -> torch.nn.Module:
    torch.manual_seed(0)
    return _perturbed(build_diffusion(_cfg("dit", hidden=16, depth=1, heads=2)))


def test_ddim_with_eta_zero_draws_only_the_initial_noise() -> None:
    model, s = _tiny_dit(), NoiseSchedule(NoiseConfig(timesteps=100))
    y = torch.tensor([3, 4])
    g = torch.Generator().manual_seed(5)
    first = ddim_sample(model, s, 2, steps=10, y=y, generator=g)
    after_one_draw = torch.Generator().manual_seed(5)
    torch.randn(2, 1, 8, 8, generator=after_one_draw)
    assert torch.equal(g.get_state(), after_one_draw.get_state())
    again = ddim_sample(model, s, 2, steps=10, y=y, generator=torch.Generator().manual_seed(5))
    assert torch.equal(first, again)
    other = ddim_sample(model, s, 2, steps=10, y=y, generator=torch.Generator().manual_seed(6))
    assert not torch.equal(first, other)
    noisy = ddim_sample(model, s, 2, steps=10, eta=1.0, y=y, generator=torch.Generator().manual_seed(5))
    assert not torch.equal(first, noisy)


def test_ddim_timesteps() -> None:
    assert ddim_timesteps(1000, 1) == [999]
    for steps in (2, 7, 50, 1000):
        ts = ddim_timesteps(1000, steps)
        assert len(set(ts)) == steps and ts[0] == 999 and ts[-1] == 0 and ts == sorted(ts, reverse=True)
    with pytest.raises(ValueError, match="steps"):
        ddim_timesteps(100, 101)


def test_guidance_combines_conditional_and_null_passes() -> None:
    model = _tiny_dit().eval()
    x, t, y = _inputs(model)
    y = y.clamp(max=9)
    cond, uncond = model(x, t, y), model(x, t, torch.full_like(y, model.null_label))
    assert not torch.allclose(cond, uncond)
    torch.testing.assert_close(guided_prediction(model, x, t, y, 1.0), cond, rtol=0, atol=0)
    torch.testing.assert_close(guided_prediction(model, x, t, y, 0.0), uncond, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(guided_prediction(model, x, t, y, 3.0), uncond + 3.0 * (cond - uncond), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(guided_prediction(model, x, t, None, 3.0), model(x, t), rtol=0, atol=0)


def test_guidance_scale_one_samples_the_conditional_model() -> None:
    model, s = _tiny_dit(), NoiseSchedule(NoiseConfig(timesteps=50))
    y = torch.tensor([1, 2])
    calls = []

    def conditional_only(x_t, t, labels):
        calls.append(labels)
        return model(x_t, t, labels)

    conditional_only.image_shape = model.image_shape
    guided = ddpm_sample(model, s, 2, y=y, guidance_scale=1.0, generator=torch.Generator().manual_seed(0))
    plain = ddpm_sample(conditional_only, s, 2, y=y, generator=torch.Generator().manual_seed(0))
    assert torch.equal(guided, plain)
    assert all(torch.equal(labels, y) for labels in calls)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_samplers_restore_modes_and_stay_in_range(sampler: str) -> None:
    model = _tiny_dit().train()
    model.layers[0].eval()  # a submodule in its own mode keeps it
    s = NoiseSchedule(NoiseConfig(timesteps=20))
    kw = {"y": torch.tensor([0, 1, 2]), "guidance_scale": 2.0, "progress": True}
    out = ddpm_sample(model, s, 3, **kw) if sampler == "ddpm" else ddim_sample(model, s, 3, steps=5, **kw)
    assert out.shape == (3, 1, 8, 8) and out.min() >= -1 and out.max() <= 1 and not out.requires_grad
    assert model.training and model.layers[1].training and not model.layers[0].training


def test_samplers_reject_bad_arguments() -> None:
    model, s = _tiny_dit(), NoiseSchedule(NoiseConfig(timesteps=20))
    with pytest.raises(ValueError, match="one label per sample"):
        ddpm_sample(model, s, 3, y=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="eta"):
        ddim_sample(model, s, 2, eta=-1.0)
    with pytest.raises(TypeError, match="image_shape"):
        ddim_sample(lambda x, t, y: x, s, 2, steps=5)
