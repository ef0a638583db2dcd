"""The demo's own parts: the pixel VAE (its latents are the image) and the picture's measures. The end-to-end
demo run is tests/test_cli.py::test_demo_runs_on_a_fresh_folder."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from lorafw.cli import demo_picture as dp


@pytest.fixture(scope="module")
def pixel_model(tmp_path_factory):
    from lorafw.cli.demo import make_base_model
    from lorafw.models.load import load_components

    path = make_base_model(tmp_path_factory.mktemp("m") / "tiny.safetensors")
    return load_components(path)  # through the loader a real checkpoint takes: the hand-set weights survive it


def test_pixel_vae_latents_are_the_image_8x_smaller_and_decode_back(pixel_model):
    vae = pixel_model.vae
    sf = vae.config.scaling_factor
    torch.manual_seed(0)
    blocks = torch.rand(1, 3, 6, 4) * 2 - 1
    x = blocks.repeat_interleave(16, 2).repeat_interleave(16, 3)  # 96 × 64 px of 16 × 16 solid blocks
    with torch.no_grad():
        z = vae.encode(x).latent_dist.sample() * sf  # what training caches
        assert z.shape == (1, 4, 12, 8)
        assert torch.allclose(z[:, :3], torch.nn.functional.avg_pool2d(x, 8), atol=1e-3)
        assert z[:, 3].abs().max() < 1e-3
        y = vae.decode(z / sf).sample  # what the sampler does
    assert torch.allclose(y, x, atol=1e-3)


@pytest.mark.parametrize("colour", [(1.0, -1.0, -1.0), (-0.2, -0.2, -0.2), (0.9, 0.9, 0.9)])
def test_a_solid_colour_survives_the_group_norms(pixel_model, colour):
    # a GroupNorm subtracts its group's mean: a naive pass-through would turn every solid image grey
    vae = pixel_model.vae
    x = torch.tensor(colour).view(1, 3, 1, 1).expand(1, 3, 64, 64).contiguous()
    with torch.no_grad():
        y = vae.decode(vae.encode(x).latent_dist.mean).sample
    assert torch.allclose(y, x, atol=1e-3)


def test_colour_distance_and_shift():
    red, white, grey = (220, 40, 40), (245, 245, 245), (128, 128, 128)
    assert dp.colour_distance(red, red) == 0
    assert dp.colour_distance((0, 0, 0), (255, 255, 255)) == pytest.approx(1.0)
    base, lora = Image.new("RGB", (8, 8), grey), Image.new("RGB", (8, 8), red)
    before, after = dp.colour_shift(base, lora, red)
    assert after == 0 and before > 0.3
    assert dp.colour_shift(lora, base, white)[0] > dp.colour_shift(lora, base, white)[1]


def test_the_picture_has_every_cell_and_a_loss_chart():
    cells = [("base model", Image.new("RGB", (32, 32), "black")), ("LoRA 1.0", Image.new("RGB", (32, 32), "red"))]
    epochs = [{"epoch": 1, "train_loss": 1.0, "val_loss": 1.1}, {"epoch": 2, "train_loss": 0.8, "val_loss": 0.9}]
    im = dp.compose([("p one", cells), ("p two", cells)], epochs, "title")
    assert im.width >= 2 * 32 and im.height > 2 * 32 + dp.CHART_H
    px = im.load()
    reds = sum(px[x, y] == (255, 0, 0) for x in range(im.width) for y in range(im.height))
    assert reds == 2 * 32 * 32  # both rows' LoRA cells, pasted whole
    chart = dp.loss_chart(epochs, 300)
    assert (220, 40, 40) in {c for _, c in chart.getcolors(10_000)}  # the validation line is drawn
    one = dp.loss_chart(epochs[:1], 300)
    assert (220, 40, 40) not in {c for _, c in one.getcolors(10_000)}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_pixel_vae_holds_in_half_precision(dtype):
    # mixed precision casts the VAE (train.no_half_vae=false): the round trip must stay within a few 8-bit levels
    from lorafw.models.pixel_vae import pixel_vae

    vae = pixel_vae().to(dtype)
    torch.manual_seed(1)
    x = (torch.rand(1, 3, 4, 4) * 2 - 1).repeat_interleave(8, 2).repeat_interleave(8, 3)
    with torch.no_grad():
        y = vae.decode(vae.encode(x.to(dtype)).latent_dist.mean).sample.float()
    assert (y - x).abs().max() < 4 / 127.5


def test_the_dataset_is_one_colour_and_the_picture_shows_a_training_image_of_the_prompts_shape(tmp_path):
    from lorafw.cli.demo import BACKGROUND, TRIGGER_COLOUR, example, make_dataset

    images = sorted(make_dataset(tmp_path).glob("*/*.png"))
    assert len(images) == 12
    colours = {c for p in images for _, c in Image.open(p).convert("RGB").getcolors(100_000)}
    assert colours == {TRIGGER_COLOUR, BACKGROUND[1]}  # one trigger colour on one background
    for shape in ("circle", "square"):
        e = example(images, f"shapes_demo, red {shape}, white background", (128, 128))
        assert f"red {shape}" in e.with_suffix(".txt").read_text() and Image.open(e).size == (128, 128)


def _blocks(seed: int, h: int = 3, w: int = 2) -> torch.Tensor:
    torch.manual_seed(seed)
    return (torch.randn(1, 4, h, w) * 2).repeat_interleave(8, 2).repeat_interleave(8, 3)


def test_the_canvas_unet_predicts_its_input_divided_by_its_rms(pixel_model):
    # on 8×8 blocks every level of the UNet sees the same picture, so the sharp and blurred halves agree
    # and the prediction is exactly the input over its RMS per channel, at any time step and for any prompt
    unet = pixel_model.unet
    x = _blocks(0)
    rms = x.pow(2).mean(dim=(2, 3), keepdim=True).sqrt()
    with torch.no_grad():
        for t, seed in ((999, 1), (10, 2)):
            torch.manual_seed(seed)
            y = unet(x, torch.tensor([t]), torch.randn(1, 77, 32)).sample
            assert torch.allclose(y, x / rms, atol=1e-4)


def test_the_base_model_draws_a_grey_canvas_whatever_the_prompt_and_seed(pixel_model):
    from diffusers import EulerAncestralDiscreteScheduler

    unet = pixel_model.unet
    for seed in range(3):
        sched = EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
        sched.set_timesteps(12)
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(1, 4, 16, 16, generator=g) * sched.init_noise_sigma
        ctx = torch.randn(1, 77, 32, generator=g)
        with torch.no_grad():
            for t in sched.timesteps:
                x = sched.step(unet(sched.scale_model_input(x, t), t, ctx).sample, t, x, generator=g).prev_sample
        assert x.abs().mean() < 0.1 and x.mean().abs() < 0.02  # pixels within ~13 levels of mid-grey on average


def test_a_lora_on_the_canvas_unet_gets_a_gradient_from_the_first_step(pixel_model):
    # proj_out is zero in the base, so a LoRA's first updates must reach it through its own up weights
    unet = pixel_model.unet
    proj = unet.down_blocks[0].attentions[0].proj_out
    down, up = torch.nn.Conv2d(proj.in_channels, 4, 1, bias=False), torch.nn.Conv2d(4, proj.out_channels, 1, bias=False)
    torch.nn.init.zeros_(up.weight)
    hook = proj.register_forward_hook(lambda m, i, o: o + up(down(i[0])))
    try:
        x = _blocks(3)
        unet(x, torch.tensor([500]), torch.randn(1, 77, 32)).sample.sub(torch.randn_like(x)).pow(2).mean().backward()
    finally:
        hook.remove()
        unet.zero_grad(set_to_none=True)
    assert up.weight.grad is not None and up.weight.grad.abs().sum() > 0
