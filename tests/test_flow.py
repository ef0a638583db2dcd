"""Rectified flow (lorafw/objective/flow.py) on fixed tensors, each against an independent restatement of kohya
sd-scripts' formulas written here in numpy (float64) from the formulas, not from lorafw's code.

sd-scripts read at commit 48d368fa557731ad0488c07304dfeba8c07910eb (Merge pull request #2268, 2026-02-16).
The random draws are replayed from the same seeded torch.Generator: flow.py's contract is one draw of `batch`
numbers per sampling mode (randn for sigmoid/shift/flux_shift and logit_normal, rand otherwise).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lorafw.objective import flow as F
from lorafw.objective.loss import LossOptions

B = 64
CPU = torch.device("cpu")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(seed: int, n: int = B) -> np.ndarray:
    return torch.randn((n,), generator=gen(seed)).double().numpy()


def rand(seed: int, n: int = B) -> np.ndarray:
    return torch.rand((n,), generator=gen(seed)).double().numpy()


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def shifted(t: np.ndarray, s: float) -> np.ndarray:
    # flux_train_utils.get_noisy_model_input_and_timesteps, "shift": (t·s)/(1 + (s − 1)·t)
    return t * s / (1 + (s - 1) * t)


def draw(seed: int = 0, n: int = B, seq: int | None = None, **kw) -> np.ndarray:
    return F.sample_sigmas(n, F.FlowOptions(**kw), gen(seed), CPU, seq).double().numpy()


# -- sampling modes: flux_train_utils.get_noisy_model_input_and_timesteps ----------------------------------
def test_uniform_is_torch_rand():
    # "uniform": sigmas = torch.rand((bsz,))
    assert np.allclose(draw(1, timestep_sampling="uniform"), rand(1), atol=1e-6)


@pytest.mark.parametrize("scale", [1.0, 2.5, 0.3])
def test_sigmoid_is_sigmoid_of_scaled_normal(scale):
    # "sigmoid": sigmas = sigmoid(sigmoid_scale · randn)
    assert np.allclose(draw(2, timestep_sampling="sigmoid", sigmoid_scale=scale), sigmoid(scale * randn(2)), atol=1e-6)


@pytest.mark.parametrize("shift,scale", [(3.0, 1.0), (1.0, 1.0), (0.5, 1.7), (5.0, 0.8)])
def test_shift_is_the_shifted_sigmoid_draw(shift, scale):
    # "shift": sigmoid(scale · randn), then (σ·s)/(1 + (s − 1)·σ) with s = discrete_flow_shift
    got = draw(3, timestep_sampling="shift", discrete_flow_shift=shift, sigmoid_scale=scale)
    assert np.allclose(got, shifted(sigmoid(scale * randn(3)), shift), atol=1e-6)


@pytest.mark.parametrize("h,w,scale", [(64, 64, 1.0), (128, 96, 1.0), (16, 16, 2.0)])
def test_flux_shift_is_the_resolution_dependent_time_shift(h, w, scale):
    # "flux_shift": mu = get_lin_function(y1=0.5, y2=1.15)((h//2)·(w//2)), the line through (256, 0.5) and
    # (4096, 1.15); sigmas = time_shift(mu, 1, sigmoid(scale·randn)) = e^mu / (e^mu + (1/σ − 1)^1)
    seq = (h // 2) * (w // 2)
    mu = 0.5 + (1.15 - 0.5) / (4096 - 256) * (seq - 256)
    t = sigmoid(scale * randn(4))
    want = math.exp(mu) / (math.exp(mu) + (1 / t - 1))
    got = draw(4, seq=F.image_seq_len_of(torch.zeros(1, 16, h, w)), timestep_sampling="flux_shift", sigmoid_scale=scale)
    assert np.allclose(got, want, atol=1e-6)


def table(shift: float) -> np.ndarray:
    # sd3_train_utils.FlowMatchEulerDiscreteScheduler.__init__: timesteps = linspace(1, 1000, 1000)[::-1];
    # sigmas = timesteps/1000, then shift·σ/(1 + (shift − 1)·σ)
    s = np.linspace(1, 1000, 1000)[::-1] / 1000
    return shift * s / (1 + (shift - 1) * s)


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("scheme", ["uniform", "logit_normal", "mode", "cosmap"])
def test_sigma_sampling_indexes_the_shifted_scheduler_table(scheme, shift):
    # "sigma": u = compute_density_for_timestep_sampling(weighting_scheme, …); indices = (u·1000).long();
    # sigmas = scheduler.sigmas[indices]. Density: logit_normal sigmoid(normal(mean, std)); mode
    # 1 − u − mode_scale·(cos²(πu/2) − 1 + u); anything else rand.
    kw = dict(timestep_sampling="sigma", weighting_scheme=scheme, discrete_flow_shift=shift,
              logit_mean=0.3, logit_std=1.4, mode_scale=1.1)
    if scheme == "logit_normal":
        u = sigmoid(0.3 + 1.4 * randn(5))
    else:
        u = rand(5)
        if scheme == "mode":
            u = 1 - u - 1.1 * (np.cos(math.pi * u / 2) ** 2 - 1 + u)
    # the float32 product decides the index, as in sd-scripts (u is float32 there too)
    idx = (torch.from_numpy(u).float() * 1000).long().numpy()
    assert np.allclose(draw(5, **kw), table(shift)[idx], atol=1e-6)


def test_sigma_sampling_clamps_u_one_to_the_last_table_entry():
    # sigmoid(50) is 1.0 in float32: sd-scripts would index scheduler.sigmas[1000], past the table's end
    s = draw(0, 8, timestep_sampling="sigma", weighting_scheme="logit_normal", logit_mean=50.0, discrete_flow_shift=3.0)
    assert np.allclose(s, table(3.0)[999], atol=1e-7) and s.min() > 0
    assert F.table_sigmas(torch.tensor([0]), 3.0).item() == 1.0


# -- time shift, mu, sampler schedule --------------------------------------------------------------------
def test_flux_mu_is_the_line_through_256_and_4096():
    assert F.flux_mu(256) == pytest.approx(0.5) and F.flux_mu(4096) == pytest.approx(1.15)
    assert F.flux_mu(1024) == pytest.approx(0.5 + 0.65 * 768 / 3840)


def test_time_shift_with_exponent_one_is_shift_by_e_mu():
    t = torch.linspace(0.01, 0.99, 50)
    assert torch.allclose(F.time_shift(0.7, 1.0, t), F.shift_sigmas(t, math.exp(0.7)), atol=1e-6)
    # exponent ≠ 1: flux_train_utils.time_shift e^mu/(e^mu + (1/t − 1)^σ)
    tn = t.double().numpy()
    assert np.allclose(F.time_shift(0.7, 2.0, t).double().numpy(), math.exp(0.7) / (math.exp(0.7) + (1 / tn - 1) ** 2),
                       atol=1e-6)


@pytest.mark.parametrize("steps,shift", [(20, 3.0), (30, 1.0), (8, 5.0)])
def test_sampling_sigmas_restate_anima_do_sample(steps, shift):
    # anima_train_utils.do_sample: sigmas = linspace(1, 0, steps + 1); if shift ≠ 1: (σ·s)/(1 + (s − 1)·σ)
    want = shifted(np.linspace(1.0, 0.0, steps + 1), shift)
    got = F.sampling_sigmas(steps, shift).double().numpy()
    assert got.shape == (steps + 1,) and np.allclose(got, want, atol=1e-6)
    assert got[0] == 1.0 and got[-1] == 0.0 and np.all(np.diff(got) < 0)


def test_sampling_default_shift_is_animas_sample_default():
    assert F.ANIMA_SAMPLE_SHIFT == 3.0
    assert torch.equal(F.sampling_sigmas(10), F.sampling_sigmas(10, 3.0))


# -- properties ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", F.TIMESTEP_SAMPLINGS)
@pytest.mark.parametrize("scheme", ["uniform", "logit_normal", "mode"])
def test_sigmas_lie_in_the_unit_interval(mode, scheme):
    s = draw(6, 20000, seq=4096, timestep_sampling=mode, weighting_scheme=scheme, sigmoid_scale=3.0,
             discrete_flow_shift=3.0)
    assert s.min() >= 0.0 and s.max() <= 1.0 and s.std() > 0.05


def test_shift_above_one_moves_mass_towards_noise_and_one_is_identity():
    base = draw(7, 5000, timestep_sampling="sigmoid")
    assert np.array_equal(draw(7, 5000, timestep_sampling="shift", discrete_flow_shift=1.0), base)
    up = draw(7, 5000, timestep_sampling="shift", discrete_flow_shift=3.0)
    down = draw(7, 5000, timestep_sampling="shift", discrete_flow_shift=0.5)
    assert np.all(up >= base) and np.all(down <= base) and up.mean() > base.mean() + 0.1
    t = torch.rand(100, generator=gen(8))
    assert torch.equal(F.shift_sigmas(t, 1.0), t)
    ends = F.shift_sigmas(torch.tensor([0.0, 1.0]), 4.0)
    assert ends.tolist() == [0.0, 1.0]


def test_flux_shift_grows_with_image_seq_len():
    small, big = draw(9, seq=256, timestep_sampling="flux_shift"), draw(9, seq=4096, timestep_sampling="flux_shift")
    assert np.all(big >= small) and big.mean() > small.mean()


def test_flux_shift_needs_the_sequence_length():
    with pytest.raises(ValueError, match="image_seq_len"):
        F.sample_sigmas(4, F.FlowOptions(timestep_sampling="flux_shift"), gen(), CPU)


def test_uniform_mean_is_one_half():
    assert abs(draw(10, 200_000, timestep_sampling="uniform").mean() - 0.5) < 0.005


def test_unknown_names_are_refused_naming_the_choices():
    with pytest.raises(ValueError, match="logit_normal.*sigma, uniform"):
        F.FlowOptions(timestep_sampling="logit_normal")
    with pytest.raises(ValueError, match="sigma_sqrt"):
        F.FlowOptions(weighting_scheme="snr")


def test_noisy_latents_interpolate_from_data_to_noise():
    x0, eps = torch.randn(3, 4, 5, 6, generator=gen(11)), torch.randn(3, 4, 5, 6, generator=gen(12))
    x = F.noisy_latents(x0, eps, torch.tensor([0.0, 1.0, 0.25]))
    assert torch.equal(x[0], x0[0]) and torch.equal(x[1], eps[1])
    assert torch.allclose(x[2], 0.75 * x0[2] + 0.25 * eps[2], atol=1e-6)
    assert torch.equal(F.velocity_target(x0, eps), eps - x0)


# -- loss weighting: flux_train_utils.compute_loss_weighting_for_sd3, anima_train_utils._for_anima ---------------
@pytest.mark.parametrize("scheme", F.WEIGHTING_SCHEMES)
def test_loss_weights_restate_sd3_weighting(scheme):
    s = np.linspace(0.02, 1.0, 50)
    if scheme == "sigma_sqrt":
        want = s**-2.0
    elif scheme == "cosmap":
        want = 2 / (math.pi * (1 - 2 * s + 2 * s**2))
    else:  # none, uniform, and the sampling densities logit_normal, mode: ones
        want = np.ones_like(s)
    got = F.loss_weights(torch.from_numpy(s).float(), scheme).double().numpy()
    assert np.allclose(got, want, rtol=1e-6)


# -- flow_loss ---------------------------------------------------------------------------------------------
def latents(seed: int = 20, b: int = 4) -> torch.Tensor:
    return torch.randn(b, 16, 8, 12, generator=gen(seed))


def exact_model(x0: torch.Tensor, scale: float = 1.0):
    # knows x0: from x_t = (1 − σ)·x0 + σ·ε, the target ε − x0 = (x_t − x0)/σ
    return lambda x, t: (x - x0) / (t / scale).view(-1, 1, 1, 1)


@pytest.mark.parametrize("mode", F.TIMESTEP_SAMPLINGS)
def test_flow_loss_is_zero_for_the_exact_velocity(mode):
    x0 = latents()
    out = F.flow_loss(exact_model(x0, 1000.0), x0, gen(21), F.FlowOptions(timestep_sampling=mode), timestep_scale=1000.0)
    assert out.loss.item() < 1e-9 and out.per_sample.shape == (4,)
    wrong = F.flow_loss(lambda x, t: torch.zeros_like(x), x0, gen(21), F.FlowOptions(timestep_sampling=mode))
    assert wrong.loss.item() > 0.5


def test_flow_loss_replays_from_the_generator():
    x0, o = latents(), F.FlowOptions(timestep_sampling="shift", discrete_flow_shift=3.0, ip_noise_gamma=0.1,
                                     ip_noise_gamma_random_strength=True)
    model = lambda x, t: x * 0.5 + t.view(-1, 1, 1, 1)  # noqa: E731
    a, b = F.flow_loss(model, x0, gen(22), o), F.flow_loss(model, x0, gen(22), o)
    c = F.flow_loss(model, x0, gen(23), o)
    assert torch.equal(a.loss, b.loss) and torch.equal(a.sigmas, b.sigmas) and not torch.equal(a.loss, c.loss)


def test_flow_loss_restates_the_step():
    # anima_train_network.get_noise_pred_and_target + train_network.process_batch: noise = randn; sigmas;
    # x_t = (1 − σ)x0 + σ(ε + γξ); pred = model(x_t, t); loss = (pred − (ε − x0))² · weighting(σ) · mask,
    # mean per sample, × loss_weights, mean.
    x0 = latents(30)
    mask = torch.rand(4, 1, 8, 12, generator=gen(31))
    w = torch.tensor([1.0, 0.5, 2.0, 1.0])
    o = F.FlowOptions(timestep_sampling="sigmoid", sigmoid_scale=1.3, weighting_scheme="cosmap", ip_noise_gamma=0.2)
    seen = {}

    def model(x, t):
        seen["x"], seen["t"] = x, t
        return torch.tanh(x)

    out = F.flow_loss(model, x0, gen(32), o, mask=mask, weights=w, timestep_scale=1000.0)
    g = gen(32)  # the same draws, in flow.py's order: noise, σ, perturbation ξ
    eps = torch.randn(x0.shape, generator=g).double().numpy()
    s = sigmoid(1.3 * torch.randn((4,), generator=g).double().numpy())
    xi = torch.randn(x0.shape, generator=g).double().numpy()
    X0, S = x0.double().numpy(), s.reshape(-1, 1, 1, 1)
    xt = (1 - S) * X0 + S * (eps + 0.2 * xi)
    assert np.allclose(seen["x"].double().numpy(), xt, atol=1e-5)
    assert np.allclose(seen["t"].double().numpy(), s * 1000, atol=1e-3)
    cos = 2 / (math.pi * (1 - 2 * S + 2 * S**2))
    per = ((np.tanh(xt) - (eps - X0)) ** 2 * cos * mask.double().numpy()).mean(axis=(1, 2, 3)) * w.double().numpy()
    assert np.allclose(out.per_sample.double().numpy(), per, rtol=1e-5)
    assert out.loss.item() == pytest.approx(per.mean(), rel=1e-5)
    assert np.allclose(out.sigmas.double().numpy(), s, atol=1e-6)


def test_flow_loss_huber_uses_a_constant_threshold():
    # train_util.get_huber_threshold_if_needed, constant: c = huber_c·huber_scale; huber = 2c(√(d² + c²) − c)
    x0 = latents(40)
    lo = LossOptions(loss_type="huber", huber_schedule="constant", huber_c=0.3, huber_scale=2.0)
    out = F.flow_loss(lambda x, t: x, x0, gen(41), F.FlowOptions(timestep_sampling="uniform"), loss=lo)
    g = gen(41)
    eps = torch.randn(x0.shape, generator=g).double().numpy()
    s = torch.rand((4,), generator=g).double().numpy().reshape(-1, 1, 1, 1)
    X0 = x0.double().numpy()
    d = (1 - s) * X0 + s * eps - (eps - X0)
    c = 0.6
    want = (2 * c * (np.sqrt(d**2 + c**2) - c)).mean(axis=(1, 2, 3))
    assert np.allclose(out.per_sample.double().numpy(), want, rtol=1e-5)
    l1 = F.flow_loss(lambda x, t: x, x0, gen(41), F.FlowOptions(timestep_sampling="uniform"), loss="l1")
    assert np.allclose(l1.per_sample.double().numpy(), np.abs(d).mean(axis=(1, 2, 3)), rtol=1e-5)


@pytest.mark.parametrize("lo,match", [
    (LossOptions(loss_type="huber", huber_schedule="snr"), "snr"),
    (LossOptions(min_snr_gamma=5.0), "min_snr_gamma"),
    (LossOptions(debiased_estimation_loss=True), "debiased"),
])
def test_flow_loss_refuses_ddpm_only_options(lo, match):
    with pytest.raises(ValueError, match=match):
        F.flow_loss(lambda x, t: x, latents(), gen(), F.FlowOptions(), loss=lo)
