"""The objective's formulas (lorafw/objective/) on fixed tensors, each against an independent restatement of
kohya sd-scripts' math (library/custom_train_functions.py, library/train_util.py, networks/lora.py) written
here from the formulas, not from lorafw's code."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from lorafw.errors import ConfigError
from lorafw.objective import loss as L
from lorafw.objective import noise as N
from lorafw.objective.maxnorm import Pair, scale_weight_norms
from lorafw.config.prediction import Declared, from_header, from_scheduler_config, resolve
from lorafw.objective.schedule import noise_scheduler, snr_table, target
from lorafw.objective.timesteps import sample_timesteps

T = 1000


def sd_alphas_cumprod() -> torch.Tensor:
    """SD's scaled-linear schedule, from its definition: β = linspace(√0.00085, √0.012, 1000)²."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, T, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


def sd_alphas_cumprod_betas() -> torch.Tensor:
    return torch.linspace(0.00085**0.5, 0.012**0.5, T, dtype=torch.float64) ** 2


def ztsnr_betas(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2023, Algorithm 1 (kohya's enforce_zero_terminal_snr), in the input's dtype."""
    s = torch.cumprod(1 - betas, 0).sqrt()
    s0, sT = s[0].item(), s[-1].item()
    s = (s - sT) * s0 / (s0 - sT)
    ab = s**2
    alphas = torch.cat([ab[:1], ab[1:] / ab[:-1]])
    return 1 - alphas


# -- schedule ------------------------------------------------------------------------------------------
def test_zero_terminal_snr_rescales_betas_as_kohya():
    plain, z = noise_scheduler(), noise_scheduler(zero_terminal_snr=True)
    assert torch.allclose(z.betas, ztsnr_betas(plain.betas.clone()), rtol=1e-3)  # float32 rounding
    exact = torch.cumprod(1 - ztsnr_betas(sd_alphas_cumprod_betas()), 0)
    assert torch.allclose(z.alphas_cumprod.double(), exact, atol=1e-6)
    assert z.alphas_cumprod[-1].item() == 0.0  # the last timestep is pure noise
    assert abs(z.alphas_cumprod[0].item() - plain.alphas_cumprod[0].item()) < 1e-6  # the first is unchanged
    assert z.config.timestep_spacing == "trailing" and plain.config.timestep_spacing == "leading"
    assert not torch.allclose(z.betas, plain.betas)


def test_snr_table_is_the_original_schedules_even_under_ztsnr():
    ac = sd_alphas_cumprod()
    want = ac / (1 - ac)
    got = snr_table()
    assert torch.allclose(got.double(), want, rtol=1e-4)
    assert got[0].item() == pytest.approx(1 / 0.00085 - 1, rel=1e-3) and got[-1].item() > 0


def test_v_target_is_alpha_noise_minus_sigma_x0():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([0, 500, 999])
    for z in (False, True):
        sched = noise_scheduler("v_prediction", z)
        ac = sched.alphas_cumprod.double()[t].view(-1, 1, 1, 1)
        want = ac.sqrt() * eps.double() - (1 - ac).sqrt() * x0.double()
        assert torch.allclose(target(sched, "v_prediction", x0, eps, t).double(), want, atol=1e-5)
        assert target(sched, "epsilon", x0, eps, t) is eps
    v = target(noise_scheduler("v_prediction", True), "v_prediction", x0, eps, t)
    assert torch.allclose(v[2], -x0[2], atol=1e-6)  # ZTSNR: at t = T the velocity is −x₀


# -- loss weights ---------------------------------------------------------------------------------------
SNR = torch.tensor([0.01, 0.5, 1.0, 5.0, 20.0, 1175.0, 5000.0])


def test_min_snr_weight_eps_and_v():
    for gamma in (1.0, 5.0):
        eps = [min(s, gamma) / s for s in SNR.tolist()]
        v = [min(s, gamma) / (s + 1) for s in SNR.tolist()]
        assert L.min_snr_weight(SNR, gamma, False).tolist() == pytest.approx(eps, rel=1e-6)
        assert L.min_snr_weight(SNR, gamma, True).tolist() == pytest.approx(v, rel=1e-6)


def test_v_like_scale_caps_snr_at_1000():
    want = [min(s, 1000) / (min(s, 1000) + 1) for s in SNR.tolist()]
    assert L.v_like_scale(SNR).tolist() == pytest.approx(want, rel=1e-6)
    assert L.v_like_scale(torch.tensor([5000.0])).item() == pytest.approx(1000 / 1001)


def test_debiased_weight():
    assert L.debiased_weight(SNR, False).tolist() == pytest.approx([1 / math.sqrt(min(s, 1000)) for s in SNR.tolist()], rel=1e-6)
    assert L.debiased_weight(SNR, True).tolist() == pytest.approx([1 / (min(s, 1000) + 1) for s in SNR.tolist()], rel=1e-6)


# -- loss types and Huber schedules ---------------------------------------------------------------------
def test_elementwise_losses_by_hand():
    p, y = torch.tensor([[3.0, -1.0]]), torch.tensor([[0.0, 0.0]])
    c = torch.tensor([4.0])
    assert L.elementwise(p, y, "l2").tolist() == [[9.0, 1.0]]
    assert L.elementwise(p, y, "l1").tolist() == [[3.0, 1.0]]
    # huber: 2c(√(d² + c²) − c): d=3, c=4 → 2·4·(5 − 4) = 8; d=1 → 8(√17 − 4)
    assert L.elementwise(p, y, "huber", c)[0].tolist() == pytest.approx([8.0, 8 * (17**0.5 - 4)])
    assert L.elementwise(p, y, "smooth_l1", c)[0].tolist() == pytest.approx([2.0, 2 * (17**0.5 - 4)])
    with pytest.raises(ValueError):
        L.elementwise(p, y, "huber")


def test_huber_behaves_like_l2_for_small_and_l1_for_large_errors():
    c = torch.tensor([0.1])
    small, large = torch.tensor([[1e-3]]), torch.tensor([[100.0]])
    z = torch.zeros(1, 1)
    assert L.elementwise(small, z, "huber", c).item() == pytest.approx(1e-6, rel=1e-2)  # ≈ d² for d ≪ c
    assert L.elementwise(large, z, "huber", c).item() == pytest.approx(2 * 0.1 * 100, rel=1e-2)  # ≈ 2c|d|


def test_huber_thresholds_by_schedule():
    t = torch.tensor([0, 250, 999])
    ac = noise_scheduler().alphas_cumprod
    assert L.huber_threshold(t, "constant", 0.1, 2.0, ac, T).tolist() == pytest.approx([0.2] * 3)
    exp = [2.0 * math.exp(math.log(0.1) * x / T) for x in (0, 250, 999)]
    assert L.huber_threshold(t, "exponential", 0.1, 2.0, ac, T).tolist() == pytest.approx(exp, rel=1e-5)
    a = ac.double()[t]
    sig = ((1 - a) / a).sqrt()
    snr = ((1 - 0.1) / (1 + sig) ** 2 + 0.1).tolist()
    assert L.huber_threshold(t, "snr", 0.1, 2.0, ac, T).tolist() == pytest.approx(snr, rel=1e-4)  # no scale on snr
    z = noise_scheduler(zero_terminal_snr=True).alphas_cumprod
    assert L.huber_threshold(torch.tensor([999]), "snr", 0.1, 1.0, z, T).item() == pytest.approx(0.1)  # σ = ∞ → c


def kohya_pipeline(pred, tgt, t, o, v, snr, ac, mask=None, w=None):
    """kohya's process_batch + post_process_loss, restated step by step."""
    if o.loss_type in ("huber", "smooth_l1"):
        if o.huber_schedule == "constant":
            c = torch.full((pred.shape[0],), o.huber_c * o.huber_scale)
        elif o.huber_schedule == "exponential":
            c = torch.exp(math.log(o.huber_c) / T * t.double()).float() * o.huber_scale
        else:
            a = ac[t]
            c = (1 - o.huber_c) / (1 + ((1 - a) / a).sqrt()) ** 2 + o.huber_c
        c = c.view(-1, 1, 1, 1)
        e = (torch.sqrt((pred - tgt) ** 2 + c**2) - c) * 2
        e = e * c if o.loss_type == "huber" else e
    else:
        e = (pred - tgt) ** 2 if o.loss_type == "l2" else (pred - tgt).abs()
    if mask is not None:
        e = e * mask
    out = e.mean(dim=(1, 2, 3))
    if w is not None:
        out = out * w
    s = torch.stack([snr[i] for i in t])
    if o.min_snr_gamma:
        m = torch.minimum(s, torch.full_like(s, o.min_snr_gamma))
        out = out * (m / (s + 1) if v else m / s)
    sc = torch.minimum(s, torch.ones_like(s) * 1000)
    if o.scale_v_pred_loss_like_noise_pred:
        out = out * sc / (sc + 1)
    if o.v_pred_like_loss:
        out = out + out / (sc / (sc + 1)) * o.v_pred_like_loss
    if o.debiased_estimation_loss:
        out = out * (1 / (sc + 1) if v else 1 / torch.sqrt(sc))
    return out


CASES = [
    (L.LossOptions(), False),
    (L.LossOptions(loss_type="l1", min_snr_gamma=5.0), False),
    (L.LossOptions(loss_type="huber", huber_schedule="snr"), True),
    (L.LossOptions(loss_type="huber", huber_schedule="exponential", huber_c=0.2, huber_scale=1.5), False),
    (L.LossOptions(loss_type="smooth_l1", huber_schedule="constant", huber_c=0.3, huber_scale=2.0), True),
    (L.LossOptions(min_snr_gamma=5.0, scale_v_pred_loss_like_noise_pred=True), True),
    (L.LossOptions(v_pred_like_loss=0.1, min_snr_gamma=1.0), False),
    (L.LossOptions(debiased_estimation_loss=True), False),
    (L.LossOptions(debiased_estimation_loss=True, min_snr_gamma=5.0), True),
]


@pytest.mark.parametrize("o,v", CASES)
def test_per_sample_loss_matches_kohyas_pipeline(o, v):
    g = torch.Generator().manual_seed(1)
    pred, tgt = torch.randn(4, 4, 6, 6, generator=g), torch.randn(4, 4, 6, 6, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    mask, w = torch.rand(4, 1, 6, 6, generator=g), torch.tensor([1.0, 0.5, 1.0, 2.0])
    snr = snr_table()
    ac = noise_scheduler(zero_terminal_snr=v).alphas_cumprod
    got = L.per_sample(pred, tgt, t, o, v, snr, ac, T, mask, w)
    want = kohya_pipeline(pred, tgt, t, o, v, snr, ac, mask, w)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-7)
    assert torch.isfinite(got).all()


def test_per_sample_loss_plain_l2_is_the_mse():
    pred, tgt = torch.ones(2, 4, 2, 2), torch.zeros(2, 4, 2, 2)
    assert L.per_sample(pred, tgt, torch.tensor([1, 2]), L.LossOptions(), False, snr_table(),
                        noise_scheduler().alphas_cumprod, T).tolist() == [1.0, 1.0]


# -- noise ----------------------------------------------------------------------------------------------
def test_offset_strength_adaptive_and_clamped():
    lat = torch.zeros(2, 2, 2, 2)
    lat[0, 0] = 1.0
    lat[0, 1] = -2.0
    assert N.offset_strength(lat, 0.1, None) == 0.1
    s = N.offset_strength(lat, 0.1, 0.5)
    assert s.shape == (2, 2, 1, 1)
    assert s.flatten().tolist() == pytest.approx([0.1 + 0.5, 0.1 + 1.0, 0.1, 0.1])
    neg = N.offset_strength(lat, 0.1, -0.5)  # kohya clamps a negative total at 0
    assert neg.flatten().tolist() == pytest.approx([0.0, 0.0, 0.1, 0.1])


def test_pyramid_matches_a_restatement_with_upsample():
    g = torch.Generator().manual_seed(2)
    noise = torch.randn(2, 4, 16, 12, generator=g)
    layers = [torch.randn(2, 4, 16, 12, generator=g), torch.randn(2, 4, 5, 4, generator=g), torch.randn(2, 4, 2, 1, generator=g)]
    up = torch.nn.Upsample(size=(16, 12), mode="bilinear")
    want = noise.clone()
    for i, layer in enumerate(layers):
        want += up(layer) * 0.3**i
    want = want / want.std()
    assert torch.allclose(N.pyramid(noise, layers, 0.3), want, atol=1e-6)


def test_pyramid_sizes_follow_kohyas_loop():
    assert N.pyramid_sizes(16, 12, [3.0, 2.0, 2.0, 2.0]) == [(16, 12), (8, 6), (4, 3), (2, 1)]
    assert N.pyramid_sizes(128, 128, [2.5] * 10)[-1] in ((1, 1),)
    assert len(N.pyramid_sizes(128, 128, [4.0] * 3)) == 3


def test_sample_noise_with_everything_off_is_plain_randn():
    lat = torch.randn(2, 4, 8, 8)
    got = N.sample_noise(lat, N.NoiseOptions(), torch.Generator().manual_seed(5))
    assert torch.equal(got, torch.randn(lat.shape, generator=torch.Generator().manual_seed(5)))


def test_sample_noise_restated_draw_by_draw():
    lat = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(9))
    o = N.NoiseOptions(noise_offset=0.1, noise_offset_random_strength=True, adaptive_noise_scale=0.2,
                       multires_noise_iterations=3, multires_noise_discount=0.4)
    got = N.sample_noise(lat, o, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    noise = torch.randn(lat.shape, generator=g)
    off = torch.rand(1, generator=g) * 0.1 + 0.2 * lat.mean(dim=(2, 3), keepdim=True).abs()
    noise = noise + off.clamp(min=0) * torch.randn(2, 4, 1, 1, generator=g)
    rs = (torch.rand(3, generator=g) * 2 + 2).tolist()
    up = torch.nn.Upsample(size=(8, 8), mode="bilinear")
    for i, r in enumerate(rs):
        hn, wn = max(1, int(8 / r**i)), max(1, int(8 / r**i))
        noise = noise + up(torch.randn(2, 4, hn, wn, generator=g)) * 0.4**i
        if hn == 1 or wn == 1:
            break
    noise = noise / noise.std()
    assert torch.allclose(got, noise, atol=1e-6)


def test_perturbation():
    noise = torch.randn(2, 4, 4, 4)
    assert N.perturbed(noise, N.NoiseOptions(), None) is noise
    got = N.perturbed(noise, N.NoiseOptions(ip_noise_gamma=0.1), torch.Generator().manual_seed(3))
    assert torch.allclose(got, noise + 0.1 * torch.randn(noise.shape, generator=torch.Generator().manual_seed(3)))
    g = torch.Generator().manual_seed(4)
    got = N.perturbed(noise, N.NoiseOptions(ip_noise_gamma=0.1, ip_noise_gamma_random_strength=True), torch.Generator().manual_seed(4))
    gamma = torch.rand(1, generator=g) * 0.1
    assert torch.allclose(got, noise + gamma * torch.randn(noise.shape, generator=g))


# -- timesteps ------------------------------------------------------------------------------------------
def test_timesteps():
    dev = torch.device("cpu")
    assert torch.equal(sample_timesteps(8, None, None, torch.Generator().manual_seed(1), dev),
                       torch.randint(0, 1000, (8,), generator=torch.Generator().manual_seed(1)))
    t = sample_timesteps(4000, 200, 300, torch.Generator().manual_seed(1), dev)
    assert t.min().item() == 200 and t.max().item() == 299
    assert sample_timesteps(3, 500, 500, None, dev).tolist() == [500, 500, 500]
    t = sample_timesteps(4000, 900, None, torch.Generator().manual_seed(1), dev)
    assert t.min().item() == 900 and t.max().item() == 999


# -- scale_weight_norms ---------------------------------------------------------------------------------
def kohya_max_norm(pairs, limit):
    """networks/lora.py apply_max_norm_regularization, restated."""
    scaled, norms = 0, []
    for down, up, alpha in pairs:
        scale = alpha / down.shape[0]
        if down.ndim == 2:
            w = up @ down
        elif down.shape[2:] == (1, 1):
            w = (up[:, :, 0, 0] @ down[:, :, 0, 0])[:, :, None, None]
        else:  # (out, in, k, k)[o, i] = Σ_r up[o, r] down[r, i]
            w = torch.einsum("or,rikl->oikl", up[:, :, 0, 0], down)
        w = w * scale
        n = w.norm().clamp(min=limit / 2)
        ratio = n.clamp(max=limit) / n
        if ratio != 1:
            scaled += 1
            up *= ratio**0.5
            down *= ratio**0.5
        norms.append((w.norm() * ratio).item())
    return scaled, sum(norms) / len(norms), max(norms)


def test_scale_weight_norms_matches_kohya_for_linear_and_conv():
    g = torch.Generator().manual_seed(0)
    shapes = [((4, 6), (5, 4), 2.0), ((4, 6), (5, 4), 4.0), ((2, 3, 1, 1), (7, 2, 1, 1), 1.0),
              ((2, 3, 3, 3), (7, 2, 1, 1), 2.0), ((4, 6), (5, 4) , 0.01)]
    tensors = [(torch.randn(d, generator=g), torch.randn(u, generator=g), a) for d, u, a in shapes]
    ours = [Pair(d.clone(), u.clone(), a) for d, u, a in tensors]
    theirs = [(d.clone(), u.clone(), a) for d, u, a in tensors]
    got = scale_weight_norms(ours, 1.0)
    want = kohya_max_norm(theirs, 1.0)
    assert got[0] == want[0] and got[0] >= 3  # the tiny-alpha pair stays
    assert got[1] == pytest.approx(want[1], rel=1e-5) and got[2] == pytest.approx(want[2], rel=1e-5)
    assert got[2] == pytest.approx(1.0, rel=1e-5)
    for p, (d, u, _) in zip(ours, theirs):
        assert torch.allclose(p.down, d, atol=1e-6) and torch.allclose(p.up, u, atol=1e-6)
    assert torch.equal(ours[-1].down, tensors[-1][0])  # below the limit: untouched
    assert scale_weight_norms([], 1.0) == (0, 0.0, 0.0)


def test_apply_max_norm_over_a_networks_adapters_and_bf16_masters():
    from types import SimpleNamespace

    from lorafw.objective.maxnorm import apply_max_norm

    def entry(seed):
        g = torch.Generator().manual_seed(seed)
        lin = lambda *s: SimpleNamespace(weight=torch.nn.Parameter(torch.randn(*s, generator=g)))  # noqa: E731
        return SimpleNamespace(module=SimpleNamespace(lora_down=lin(4, 6), lora_up=lin(5, 4)),
                               target=SimpleNamespace(alpha=4.0))

    loha = SimpleNamespace(module=SimpleNamespace(hada_w1_a=None), target=SimpleNamespace(alpha=4.0))  # not a pair: left
    net = SimpleNamespace(entries=[entry(0), entry(1), loha])
    assert apply_max_norm(net, None, None) is None
    figures = apply_max_norm(net, None, 0.5)
    assert figures["max_norm/keys_scaled"] == 2 and figures["max_norm/max_key_norm"] == pytest.approx(0.5, rel=1e-5)
    bf = SimpleNamespace(entries=[entry(2)])
    bf16 = [bf.entries[0].module.lora_down.weight, bf.entries[0].module.lora_up.weight]
    masters = SimpleNamespace(pairs=[(p, torch.nn.Parameter(p.detach().double())) for p in bf16])
    before = [p.detach().clone() for p in bf16]
    apply_max_norm(bf, masters, 0.5)
    (down, up) = [m for _, m in masters.pairs]
    assert (up @ down * 4.0 / 4).norm().item() == pytest.approx(0.5, rel=1e-6)  # the masters are measured and scaled
    ratio = bf16[0].detach() / before[0]
    assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio)) and ratio.flatten()[0] < 1  # the copies follow


# -- prediction type ------------------------------------------------------------------------------------
UNET = ["model.diffusion_model.input_blocks.0.0.weight"]


class Train:
    def __init__(self, **kw):
        self.prediction_type, self.zero_terminal_snr, self.force_prediction_type = "auto", None, False
        self.scale_v_pred_loss_like_noise_pred, self.v_pred_like_loss = False, None
        self.__dict__.update(kw)


def test_declared_from_marker_tensors_metadata_and_scheduler_config():
    assert from_header(UNET, {}) == Declared()
    d = from_header(UNET + ["v_pred", "ztsnr"], {})
    assert (d.prediction, d.ztsnr) == ("v_prediction", True) and "v_pred marker" in d.source
    d = from_header(UNET + ["v_pred"], {})
    assert (d.prediction, d.ztsnr) == ("v_prediction", None)
    assert from_header(UNET, {"modelspec.prediction_type": "v"}).prediction == "v_prediction"
    assert from_header(UNET, {"modelspec.prediction_type": "epsilon"}).prediction == "epsilon"
    d = from_header(UNET, {"ss_v_parameterization": "True", "ss_zero_terminal_snr": "True"})
    assert (d.prediction, d.ztsnr) == ("v_prediction", True)
    for stated in ("flow", "rf", "rectified_flow"):  # a rectified-flow checkpoint that says so
        assert from_header(UNET, {"modelspec.prediction_type": stated}).prediction == "flow"
    with pytest.raises(ConfigError, match="x0"):
        from_header(UNET, {"modelspec.prediction_type": "x0"})
    d = from_scheduler_config({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0})
    assert d.prediction == "flow" and "FlowMatchEulerDiscreteScheduler" in d.source
    d = from_scheduler_config({"prediction_type": "v_prediction", "rescale_betas_zero_snr": True})
    assert (d.prediction, d.ztsnr) == ("v_prediction", True) and "scheduler_config" in d.source
    assert from_scheduler_config({"prediction_type": "epsilon"}).ztsnr is None
    assert from_scheduler_config(None) == Declared()
    with pytest.raises(ConfigError, match="sample"):
        from_scheduler_config({"prediction_type": "sample"})


def test_resolve_auto_explicit_contradiction_and_force():
    vz = Declared("v_prediction", True, "the checkpoint's v_pred marker tensor and ztsnr marker")
    r = resolve(Train(), vz)
    assert (r.prediction, r.zero_terminal_snr, r.v) == ("v_prediction", True, True) and "v_pred marker" in r.source
    r = resolve(Train(), Declared())
    assert (r.prediction, r.zero_terminal_snr) == ("epsilon", False) and "default" in r.source
    eps = Declared("epsilon", None, "the checkpoint's metadata modelspec.prediction_type=epsilon")
    with pytest.raises(ConfigError) as e:
        resolve(Train(prediction_type="v_prediction"), eps, "base_model.path=/m/eps.safetensors")
    msg = str(e.value)
    assert "train.prediction_type" in msg and "v_prediction" in msg and "epsilon" in msg and "/m/eps.safetensors" in msg
    assert "force_prediction_type" in msg
    r = resolve(Train(prediction_type="v_prediction", force_prediction_type=True), eps)
    assert r.prediction == "v_prediction" and "forced" in r.source
    r = resolve(Train(prediction_type="v_prediction", zero_terminal_snr=True), Declared())  # nothing stated
    assert (r.prediction, r.zero_terminal_snr) == ("v_prediction", True)
    with pytest.raises(ConfigError, match="zero_terminal_snr"):
        resolve(Train(zero_terminal_snr=False), vz)
    with pytest.raises(ConfigError, match="scale_v_pred_loss_like_noise_pred"):
        resolve(Train(scale_v_pred_loss_like_noise_pred=True), Declared())
    with pytest.raises(ConfigError, match="v_pred_like_loss"):
        resolve(Train(v_pred_like_loss=0.1), vz)
    assert resolve(Train(scale_v_pred_loss_like_noise_pred=True), vz).v


# -- config rules (config/validate.py) ------------------------------------------------------------------
def checked(*overrides: str, recipe: str = "pdxl", check_paths: bool = False):
    from lorafw.config.compose import compose_dict
    from lorafw.config.validate import spec_from_dict

    return spec_from_dict(compose_dict(recipe, ["base_model.path=/m/x.safetensors", "dataset.root=/d", *overrides]),
                          check_paths=check_paths)


@pytest.mark.parametrize("overrides,words", [
    (["train.adaptive_noise_scale=0.01"], ["train.adaptive_noise_scale", "train.noise_offset"]),
    (["train.noise_offset_random_strength=true"], ["train.noise_offset_random_strength"]),
    (["train.ip_noise_gamma_random_strength=true"], ["train.ip_noise_gamma"]),
    (["train.min_timestep=600", "train.max_timestep=500"], ["train.min_timestep", "600", "500"]),
    (["train.min_timestep=999", "train.max_timestep=1000"], None),
    (["train.max_timestep=1000", "train.min_timestep=1000"], ["train.min_timestep"]),
    (["train.prediction_type=epsilon", "train.scale_v_pred_loss_like_noise_pred=true"], ["scale_v_pred_loss_like_noise_pred"]),
    (["train.prediction_type=v_prediction", "train.v_pred_like_loss=0.1"], ["train.v_pred_like_loss"]),
    (["train.zero_terminal_snr=true", "sample.sampler=lms"], ["sample.sampler", "lms"]),
    (["train.loss_type=huber2"], ["train.loss_type"]),
    (["train.huber_c=0"], ["train.huber_c"]),
    (["train.multires_noise_discount=1.5"], ["train.multires_noise_discount"]),
    (["train.max_timestep=1001"], ["train.max_timestep"]),
])
def test_objective_rules(overrides, words):
    if words is None:
        checked(*overrides)
        return
    with pytest.raises(ConfigError) as e:
        checked(*overrides)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_notes_for_ztsnr_on_epsilon_and_sdxl_clip_skip():
    _, notes = checked("train.prediction_type=epsilon", "train.zero_terminal_snr=true", "train.clip_skip=2")
    assert any("zero_terminal_snr" in n for n in notes) and any("clip_skip=2 is ignored on SDXL" in n for n in notes)
    _, notes = checked(recipe="sd15_character")
    assert not any("clip_skip" in n for n in notes)


def test_an_epsilon_file_asked_to_train_v_prediction_is_refused_before_training(tiny_xl_model, tiny_xl_vpred_model):
    from lorafw.models.load import inspect_base_model

    info = inspect_base_model(tiny_xl_vpred_model)
    assert (info.prediction.prediction, info.prediction.ztsnr) == ("v_prediction", True)
    assert inspect_base_model(tiny_xl_model).prediction == Declared()
    eps = Path(tiny_xl_model).with_name("tiny-sdxl-eps-stated.safetensors")
    if not eps.exists():
        from conftest import with_marker_tensors

        with_marker_tensors(tiny_xl_model, eps, metadata={"modelspec.prediction_type": "epsilon"})
    with pytest.raises(ConfigError) as e:
        checked(f"base_model.path={eps}", "train.prediction_type=v_prediction", "dataset.root=" + str(eps.parent),
                check_paths=True)
    msg = str(e.value)
    assert "train.prediction_type" in msg and str(eps) in msg and "modelspec.prediction_type=epsilon" in msg
    spec, _ = checked(f"base_model.path={eps}", "train.prediction_type=v_prediction", "train.force_prediction_type=true",
                      "dataset.root=" + str(eps.parent), check_paths=True)
    assert spec.train.force_prediction_type


# -- samples (sampling/render.py) -----------------------------------------------------------------------
@pytest.mark.parametrize("sampler", ["euler_a", "euler", "ddim", "dpmpp_2m", "dpmpp_2m_karras"])
def test_samplers_follow_the_training_objective(sampler):
    from lorafw.sampling.render import make_scheduler

    s = make_scheduler(sampler, noise_scheduler("v_prediction", True))
    assert s.config.prediction_type == "v_prediction" and s.config.rescale_betas_zero_snr
    assert s.config.timestep_spacing == "trailing"
    s.set_timesteps(10)
    assert int(s.timesteps[0]) == 999  # the first step starts from pure noise
    assert torch.isfinite(torch.as_tensor(s.init_noise_sigma)).all()
    e = make_scheduler(sampler, noise_scheduler())
    assert e.config.prediction_type == "epsilon" and not e.config.get("rescale_betas_zero_snr", False)


def test_lms_refuses_a_ztsnr_schedule():
    from lorafw.errors import LorafwError
    from lorafw.sampling.render import make_scheduler

    with pytest.raises(LorafwError, match="lms"):
        make_scheduler("lms", noise_scheduler("v_prediction", True))
    assert make_scheduler("lms", noise_scheduler("v_prediction")).config.prediction_type == "v_prediction"


# -- metadata (outputs/metadata.py) ---------------------------------------------------------------------
def test_metadata_names_every_option_as_kohya():
    from lorafw.config.compose import compose
    from lorafw.config.prediction import Resolved
    from lorafw.outputs.metadata import TrainingFacts, build_metadata

    spec = compose("pdxl", ["base_model.path=/m/x.safetensors", "dataset.root=/d", "train.multires_noise_iterations=6",
                            "train.ip_noise_gamma=0.1", "train.min_timestep=10", "train.max_timestep=900",
                            "train.loss_type=huber", "train.huber_c=0.2", "train.debiased_estimation_loss=true",
                            "train.zero_terminal_snr=true", "train.noise_offset=0.03", "train.adaptive_noise_scale=0.01",
                            "train.scale_weight_norms=1.0", "train.prediction_type=v_prediction"], check_paths=False)
    from lorafw.archs.sdxl import ARCH

    facts = TrainingFacts(arch="sdxl", family=ARCH, epoch=1, step=1, total_steps=1, batches_per_epoch=1, warmup_steps=0,
                          num_train_images=1, num_reg_images=0, started_at=0.0, optimizer="x", mixed_precision="bf16",
                          tag_frequency={}, dataset_dirs={}, bucket_info={},
                          objective=Resolved("v_prediction", True, "train.prediction_type", "train.zero_terminal_snr"))
    m = build_metadata(spec, facts, "x")
    want = {"ss_multires_noise_iterations": "6", "ss_multires_noise_discount": "0.3", "ss_ip_noise_gamma": "0.1",
            "ss_min_timestep": "10", "ss_max_timestep": "900", "ss_loss_type": "huber", "ss_huber_c": "0.2",
            "ss_huber_schedule": "snr", "ss_debiased_estimation": "True", "ss_zero_terminal_snr": "True",
            "ss_adaptive_noise_scale": "0.01", "ss_noise_offset": "0.03", "ss_scale_weight_norms": "1.0",
            "modelspec.prediction_type": "v", "ss_v_parameterization": "True", "ss_huber_scale": "1.0",
            "ss_ip_noise_gamma_random_strength": "False", "ss_noise_offset_random_strength": "False"}
    assert {k: m.get(k) for k in want} == want
    eps = build_metadata(spec, TrainingFacts(**{**facts.__dict__, "objective": None}), "x")
    assert (eps["modelspec.prediction_type"], eps["ss_v_parameterization"], eps["ss_zero_terminal_snr"]) == ("epsilon", "False", "False")
