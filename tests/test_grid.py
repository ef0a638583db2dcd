"""Samples and the epoch × weight grid: prompts, UI-faithful weights, layout, determinism."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import tiny_overrides
from lorafw.config.compose import compose
from lorafw.config.prompts import parse_line
from lorafw.sampling.prompts import a1111_parameters, fallback_prompt

PROMPTS = ["toy, red circle --d 3 --s 4 --w 64 --h 64"]


def sample_spec(**kw):
    spec = compose("sd15_character", ["base_model.path=/m", "dataset.root=/d"], check_paths=False).sample
    import dataclasses

    return dataclasses.replace(spec, **kw)


def test_prompt_lines_with_kohya_flags():
    d = sample_spec()
    p = parse_line("kafka, 1girl, smile --n lowres, bad hands --w 768 --h 1152 --d 7 --s 30 --l 6.5", d, (512, 512))
    assert (p.prompt, p.negative, p.width, p.height, p.seed, p.steps, p.cfg_scale) == (
        "kafka, 1girl, smile", "lowres, bad hands", 768, 1152, 7, 30, 6.5)
    q = parse_line("kafka", d, (512, 512))
    assert (q.width, q.height, q.seed, q.steps, q.cfg_scale, q.negative) == (512, 512, d.seed, d.steps, d.cfg_scale, d.negative)
    for bad, msg in [("kafka --x 3", "unknown flag --x"), ("kafka --w abc", "--w needs a number"), ("--n x", "no prompt"),
                     ("kafka --w 100", "multiple of 8")]:
        with pytest.raises(ValueError, match=msg):
            parse_line(bad, d, (512, 512))


def test_bad_prompts_fail_at_validation():
    from lorafw.errors import ConfigError

    with pytest.raises(ConfigError, match=r"sample.prompts\[0\]: unknown flag --q"):
        compose("sd15_character", ["base_model.path=/m", "dataset.root=/d", "sample.prompts=['kafka --q 1']"], check_paths=False)


def test_fallback_prompt_and_a1111_parameters():
    freq = {"3_kafka": {"kafka": 20, "1girl": 20, "sunglasses": 12, "jacket": 15}, "2_x": {"1girl": 5, "smile": 3}}
    assert fallback_prompt(["kafka"], freq, n_tags=4) == "kafka, 1girl, jacket, sunglasses"
    p = parse_line("kafka --d 5 --s 20 --l 7", sample_spec(), (512, 512))
    text = a1111_parameters(p, "euler_a", {"Lora": "kafka-10"})
    assert text.splitlines()[0] == "kafka" and text.splitlines()[1].startswith("Negative prompt: ")
    assert "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 512x512, Lora: kafka-10" in text


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory, tiny_model, tiny_dataset):
    from lorafw.run import train

    out = tmp_path_factory.mktemp("grid") / "run"
    spec = compose("sd15_character", tiny_overrides(tiny_model, tiny_dataset, out) + [
        "train.epochs=2", "optimizer.lr=5e-3", "sample.every_n_epochs=1", f"sample.prompts={json.dumps(PROMPTS)}"])
    return train(spec)


def test_samples_during_training_carry_their_settings(grid_run):
    files = sorted((grid_run.run_dir / "samples").glob("*.png"))
    assert [f.name for f in files] == ["toy-01_00.png", "toy-02_00.png"]
    im = Image.open(files[0])
    assert im.size == (64, 64)
    params = im.info["parameters"]
    assert params.startswith("toy, red circle\nNegative prompt: ") and "Seed: 3" in params and "Steps: 4" in params
    assert "Sampler: Euler a" in params and "Lora: toy-01" in params


def render_base(grid_run, prompt, sampler="euler_a"):
    from lorafw.models.load import load_components
    from lorafw.sampling.render import Renderer

    spec = grid_run.spec
    c = load_components(spec.base_model.path, expected_arch="sd15")
    r = Renderer("sd15", c.unet, c.vae, c.text_encoders, c.tokenizers, c.noise_scheduler, spec.train.max_token_length,
                 spec.train.clip_skip, torch.device("cpu"))
    return r.render(prompt, sampler)


def test_grid_layout_cells_and_weights(grid_run):
    from lorafw.sampling.grid import grid

    written = grid(grid_run.run_dir, ["grid.weights=[1.0,0.5,0.0]"])
    assert [p.name for p in written] == ["prompt-00.png"]
    g = Image.open(written[0])
    layout = json.loads(g.info["lorafw_grid"])
    assert layout["rows"] == ["toy-02", "toy-01"] and layout["columns"] == ["1", "0.5", "0"] and layout["cell"] == [64, 64]
    cells = {(r, c): np.asarray(Image.open(grid_run.run_dir / "grids" / "prompt-00" / f"{r}_w{c}.png"))
             for r in layout["rows"] for c in layout["columns"]}
    w, h = g.size
    assert w > 3 * 64 and h > 2 * 64  # labels around three columns and two rows
    arr = np.asarray(g)
    for ri, r in enumerate(layout["rows"]):  # each cell sits in the grid's bottom-right block, row by row
        for ci, c in enumerate(layout["columns"]):
            y0, x0 = h - (2 - ri) * 64, w - (3 - ci) * 64
            assert np.array_equal(arr[y0 : y0 + 64, x0 : x0 + 64], cells[(r, c)])
    prompt = parse_line(PROMPTS[0], grid_run.spec.sample, (64, 64))
    base = np.asarray(render_base(grid_run, prompt))
    assert np.array_equal(cells[("toy-02", "0")], base)  # weight 0: the base model, bit for bit
    assert np.array_equal(cells[("toy-01", "0")], base)
    assert not np.array_equal(cells[("toy-02", "1")], base)  # weight 1 changes the image
    assert not np.array_equal(cells[("toy-02", "1")], cells[("toy-01", "1")])  # and epochs differ


@pytest.mark.parametrize("net", ["lora", "dora"])
def test_patched_weights_match_the_trained_adapters(compose_tiny, net, tmp_path):
    from lorafw.models.load import load_components
    from lorafw.network.apply import WeightPatcher, module_names
    from lorafw.run import resolve_outputs
    from lorafw.trainers.trainer import prepare

    extra = ["network=dora", "network.conv_dim=2", "network.conv_alpha=1"] if net == "dora" else []
    spec = resolve_outputs(compose_tiny("sd15_character", *extra, "optimizer.lr=1e-2", "output.save_precision=fp32"))
    tr = prepare(spec, spec.output.dir)
    result = tr.run()
    lora = load_file(str(result.lora_files[-1]))
    c = load_components(spec.base_model.path)
    patcher = WeightPatcher(module_names(c.unet, c.text_encoders, ("lora_te",)))
    torch.manual_seed(0)
    x, t, ctx = torch.randn(1, 4, 8, 8), torch.tensor([200]), torch.randn(1, 77, 32)
    ids = torch.randint(0, 49406, (1, 77))
    with torch.no_grad():
        base_out = c.unet(x, t, ctx).sample
        assert patcher.apply(lora, 1.0) == len(tr.state.network.entries)
        tr.models.denoiser.eval()
        # at the output's scale: patched weights and the training forward (DoRA's cached norms) sum floats in another
        # order (measured up to 2e-4 on an output ~1); the adapters' own effect is checked to be far above that
        trained = tr.models.denoiser(x, t, ctx).sample
        tol = 1e-3 * float(trained.abs().max())
        assert float((trained - base_out).abs().max()) > 10 * tol, "the adapters changed nothing measurable"
        torch.testing.assert_close(c.unet(x, t, ctx).sample, trained, atol=tol, rtol=1e-3)
        te = c.text_encoders[0](ids, output_hidden_states=True).hidden_states[-2]
        tr.models.text_encoders[0].eval()
        te_trained = tr.models.text_encoders[0](ids, output_hidden_states=True).hidden_states[-2]
        torch.testing.assert_close(te, te_trained, atol=1e-3 * float(te_trained.abs().max()), rtol=1e-3)
        name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
        full = patcher.modules[name].weight.clone()
        patcher.apply(lora, 0.5)
        original = patcher.originals[name]
        torch.testing.assert_close(patcher.modules[name].weight, original + 0.5 * (full - original))  # the UIs' interpolation
        patcher.apply(lora, 0.0)
        assert torch.equal(c.unet(x, t, ctx).sample, base_out)  # weight 0: exactly the base model
        patcher.restore()
        assert torch.equal(c.unet(x, t, ctx).sample, base_out)


def test_grid_on_a_sweep_labels_each_run(tmp_path, tiny_model, tiny_dataset):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "lorafw", "-m", "+recipe=sd15_character", *tiny_overrides(tiny_model, tiny_dataset, sweep),
           "network.dim=4,8", f"sample.prompts={json.dumps(PROMPTS)}"]
    subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True, env={**__import__("os").environ, "PYTHONPATH": str(root)})
    from lorafw.cli import main

    assert main(["grid", str(sweep), "grid.weights=[1.0,0.0]"]) == 0  # (the sweep ran through Hydra above)
    grids = sorted(sweep.glob("grids/*/prompt-00.png"))
    assert [g.parent.name for g in grids] == ["0_network.dim=4", "1_network.dim=8"]
    assert [json.loads(Image.open(g).info["lorafw_grid"])["run"] for g in grids] == ["0_network.dim=4", "1_network.dim=8"]
