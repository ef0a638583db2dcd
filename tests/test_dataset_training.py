"""The dataset pipeline inside real runs: latent cache reuse, text caching, masks, regularisation, bad files."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import make_folder, scanned_dataset
from lorafw.data.latents import LatentCache
from lorafw.errors import ConfigError, DatasetError
from lorafw.run import resolve_outputs
from lorafw.trainers.step import apply_loss_weights, per_sample_loss


def diffusion_loss(pred, target, t, sched, cfg=None, mask=None, weights=None):
    """The step's per-sample loss of a prediction (plain MSE), masked and weighted."""
    return apply_loss_weights(per_sample_loss(pred, target, mask, t, sched), t, weights=weights)
from lorafw.trainers.trainer import Trainer, prepare


def trainer_for(spec) -> Trainer:
    spec = resolve_outputs(spec)
    return prepare(spec, spec.output.dir)


dataset = scanned_dataset


def test_disk_cache_reencodes_only_what_changed(tmp_path, tiny_parts):
    from lorafw.models.tiny import build_sd15

    folder = make_folder(tmp_path / "data", "1_a", [(64, 64), (80, 80), (96, 96)], ["a"])
    cache_dir = tmp_path / "cache"
    vae = tiny_parts["vae"]

    def build_cache(data, v=vae):
        c = LatentCache(data, v, 0.18215, torch.device("cpu"), torch.float32, cache_dir)
        c.build()
        return c

    first = build_cache(dataset(tmp_path / "data"))
    assert (first.stats.encoded, first.stats.reused) == (3, 0)
    again = build_cache(dataset(tmp_path / "data"))
    assert (again.stats.encoded, again.stats.reused) == (0, 3)
    assert all(torch.equal(first.latents[k], again.latents[k]) for k in first.latents)
    img = Image.open(folder / "001.png").convert("RGB")
    img.putpixel((5, 5), (1, 2, 3))
    img.save(folder / "001.png")  # one image changed
    changed = build_cache(dataset(tmp_path / "data"))
    assert (changed.stats.encoded, changed.stats.reused) == (1, 2)
    flipped = build_cache(dataset(tmp_path / "data", "dataset.flip_aug=true"))
    assert (flipped.stats.encoded, flipped.stats.reused) == (3, 3)  # the flipped copies are new, the rest reused
    rebucketed = build_cache(dataset(tmp_path / "data", "dataset.resolution=128", "dataset.max_bucket_reso=256"))
    assert rebucketed.stats.reused == 0
    other_vae = build_cache(dataset(tmp_path / "data"), v=build_sd15(seed=1)["vae"])
    assert (other_vae.stats.encoded, other_vae.stats.reused) == (3, 0)


def test_a_damaged_cache_entry_is_encoded_again(tmp_path, tiny_parts):
    make_folder(tmp_path / "data", "1_a", [(64, 64)], ["a"])
    c = LatentCache(dataset(tmp_path / "data"), tiny_parts["vae"], 0.18215, torch.device("cpu"), torch.float32, tmp_path / "cache")
    c.build()
    (entry,) = list((tmp_path / "cache").rglob("*.safetensors"))
    entry.write_bytes(b"garbage")
    c2 = LatentCache(dataset(tmp_path / "data"), tiny_parts["vae"], 0.18215, torch.device("cpu"), torch.float32, tmp_path / "cache")
    c2.build()
    assert c2.stats.encoded == 1 and torch.equal(c2.latents[(0, False)], c.latents[(0, False)])


def test_cached_text_encoder_outputs_give_the_same_files(compose_tiny, tmp_path):
    common = ["optimizer.text_encoder_lr=0", "dataset.shuffle_caption=false", "output.save_precision=fp32"]
    plain = trainer_for(compose_tiny("sd15_character", *common, f"output.dir={tmp_path / 'a'}"))
    a = load_file(str(plain.run().lora_files[-1]))
    cached = trainer_for(compose_tiny("sd15_character", *common, "dataset.cache_text_encoder_outputs=true", f"output.dir={tmp_path / 'b'}"))
    b = load_file(str(cached.run().lora_files[-1]))
    assert cached.caches.text is not None and len(cached.caches.text) == 4
    assert next(cached.models.text_encoders[0].parameters()).device.type == "cpu"
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_same_data_in_another_folder_gives_the_same_files(compose_tiny, tiny_dataset, tmp_path):
    """Nothing random may depend on where the dataset lives (the latent sample was once seeded by the path)."""
    import shutil

    moved = tmp_path / "elsewhere" / "deeper" / "toy"
    shutil.copytree(tiny_dataset, moved)
    common = ["output.save_precision=fp32"]
    a = load_file(str(trainer_for(compose_tiny("sd15_character", *common, f"output.dir={tmp_path / 'a'}")).run().lora_files[-1]))
    b = load_file(str(trainer_for(compose_tiny("sd15_character", *common, f"output.dir={tmp_path / 'b'}", data=moved)).run().lora_files[-1]))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_text_caching_with_shuffled_captions_is_refused(compose_tiny):
    with pytest.raises(ConfigError, match="captions change from step to step .*shuffle_caption"):
        compose_tiny("sd15_character", "optimizer.text_encoder_lr=0", "dataset.cache_text_encoder_outputs=true")


def test_masked_loss_weights_pixels():
    pred, target = torch.ones(2, 4, 8, 8), torch.zeros(2, 4, 8, 8)
    t = torch.tensor([10, 20])
    from lorafw.models.load import noise_scheduler

    sched = noise_scheduler()
    full = diffusion_loss(pred, target, t, sched, None)
    assert torch.equal(diffusion_loss(pred, target, t, sched, None, mask=torch.ones(2, 1, 8, 8)), full)
    assert diffusion_loss(pred, target, t, sched, None, mask=torch.zeros(2, 1, 8, 8)).abs().sum() == 0
    half = torch.zeros(2, 1, 8, 8)
    half[..., :4] = 1
    assert torch.allclose(diffusion_loss(pred, target, t, sched, None, mask=half), full / 2)
    assert torch.allclose(diffusion_loss(pred, target, t, sched, None, weights=torch.tensor([1.0, 0.25])), full * torch.tensor([1.0, 0.25]))


def test_masked_training_uses_the_alpha_channel(compose_tiny, tmp_path):
    folder = tmp_path / "data" / "2_a"
    folder.mkdir(parents=True)
    for i in range(2):
        im = Image.new("RGBA", (64, 64), (200, 30 * i, 30, 255))
        im.paste((0, 0, 0, 0), (0, 0, 32, 64))
        im.save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text("a, b")
    tr = trainer_for(compose_tiny("sd15_character", "dataset.masked_loss=true", data=tmp_path / "data"))
    result = tr.run()
    m = tr.caches.latents.get_mask(0, False)
    assert m.shape == (1, 8, 8) and m[0, :, :4].max() == 0 and m[0, :, 4:].min() == 1
    with safe_open(str(result.lora_files[-1]), "pt") as f:
        assert f.metadata()["ss_masked_loss"] == "True"


def test_regularisation_images_double_the_items_and_are_counted(compose_tiny, tmp_path):
    make_folder(tmp_path / "reg", "1_woman", [(64, 64)] * 3, ["1girl, woman"])
    tr = trainer_for(compose_tiny("sd15_character", f"dataset.reg_root={tmp_path / 'reg'}", "dataset.prior_loss_weight=0.5"))
    assert (tr.data.n_train_items, tr.data.n_reg_items, tr.plan.steps_per_epoch) == (8, 8, 8)
    result = tr.run()
    with safe_open(str(result.lora_files[-1]), "pt") as f:
        m = f.metadata()
    assert (m["ss_num_train_images"], m["ss_num_reg_images"], m["ss_prior_loss_weight"], m["ss_steps"]) == ("8", "3", "0.5", "8")
    assert json.loads(m["ss_dataset_dirs"]) == {"2_toy": {"n_repeats": 2, "img_count": 4}}
    assert json.loads(m["ss_reg_dataset_dirs"]) == {"1_woman": {"n_repeats": 1, "img_count": 3}}


def make_bad_dataset(root):
    make_folder(root, "2_a", [(64, 64)] * 3, ["a, b"])
    bad = root / "2_a" / "cut.jpg"
    Image.effect_noise((64, 64), 50).convert("RGB").save(bad, quality=95)
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    return bad


def test_damaged_images_stop_the_run_before_loading(compose_tiny, tmp_path):
    bad = make_bad_dataset(tmp_path / "data")
    with pytest.raises(DatasetError) as e:
        trainer_for(compose_tiny("sd15_character", data=tmp_path / "data"))
    assert str(bad) in str(e.value) and "dataset.skip_bad_images=true" in str(e.value)
    assert not (tmp_path / "run").exists()


def test_skip_bad_images_trains_without_them(compose_tiny, tmp_path):
    bad = make_bad_dataset(tmp_path / "data")
    tr = trainer_for(compose_tiny("sd15_character", "dataset.skip_bad_images=true", data=tmp_path / "data"))
    assert len(tr.data.images) == 3 and any("left out 1 image(s)" in w and str(bad) in w for w in tr.plan.dataset_warnings)
    tr.run()
    rec = json.loads((tr.run_dir / "run.json").read_text())
    assert any(f["kind"] == "unreadable" and f["paths"] == [str(bad)] for f in rec["lint"]["findings"])
    assert os.path.getsize(bad) > 0  # never deleted or moved


# -- random crop (kohya's random_crop): a window drawn per step from the step's seed ---------------------------
def random_crop_spec(compose_tiny, tmp_path, *extra):
    data = tmp_path / "data"
    make_folder(data, "2_wide", [(128, 64), (160, 64)], ["toy, wide"])
    return compose_tiny("sd15_character", "dataset.random_crop=true", "dataset.cache_latents=false", *extra, data=data)


def test_random_crop_windows_come_from_the_step_seed_and_move_the_pixels(tmp_path):
    from types import SimpleNamespace

    from lorafw.trainers import batch

    make_folder(tmp_path / "data", "2_wide", [(128, 64), (160, 64)], ["toy, wide"])
    data = dataset(tmp_path / "data", "dataset.random_crop=true", "dataset.cache_latents=false")
    pl = data.images[0].placement
    assert pl.bucket == (64, 64) and pl.resized == (128, 64) and data.random_crop(0)
    draws = [batch.crops(data, [0, 1], batch.step_seed(7, micro)) for micro in range(40)]
    assert draws == [batch.crops(data, [0, 1], batch.step_seed(7, micro)) for micro in range(40)]  # replayable
    lefts = {d[0][0] for d in draws}
    assert len(lefts) > 10 and all(0 <= x <= 64 for x in lefts) and {d[0][1] for d in draws} == {0}
    (left, top), _ = draws[3]
    pixels = batch.load_pixels(SimpleNamespace(device=torch.device("cpu")), data, ((0,), (False,), ((left, top),)))[0]
    with Image.open(data.images[0].entry.path) as im:
        want = im.convert("RGB").resize((128, 64), Image.Resampling.LANCZOS).crop((left, top, left + 64, top + 64))
    expected = torch.from_numpy(np.asarray(want, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1.0
    assert torch.equal(pixels, expected)
    off = dataset(tmp_path / "data")  # random_crop off: the centre crop, whatever the seed
    assert {tuple(batch.crops(off, [0, 1], batch.step_seed(7, m))) for m in range(10)} == {((32, 0), (48, 0))}


def test_random_crop_trains_other_weights_than_the_centre_crop(compose_tiny, tmp_path):
    def run(name: str, *extra: str):
        return trainer_for(random_crop_spec(compose_tiny, tmp_path / name, f"output.dir={tmp_path / name / 'run'}",
                                            *extra)).run()

    crop, centre, again = run("a"), run("b", "dataset.random_crop=false"), run("c")
    a, b, c = (load_file(str(r.lora_files[-1])) for r in (crop, centre, again))
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(a[k], c[k]) for k in a)  # the same seed draws the same windows


def test_sdxl_conditions_on_each_items_crop_even_for_one_image_twice(tmp_path):
    from lorafw.archs.sdxl import ARCH

    make_folder(tmp_path / "d", "1_a", [(128, 64)])
    data = dataset(tmp_path / "d")
    text = {"encoder_hidden_states": torch.zeros(2, 3, 4), "text_embeds": torch.zeros(2, 4)}
    placed = data.placed([0, 0], [(5, 0), (40, 0)])
    ids = ARCH.conditioning(text, placed, [0, 1], [False, True])["added_cond_kwargs"]["time_ids"]
    # (original h, w, crop top, crop left, target h, w); a flip mirrors the left: 128 - 64 - 40
    assert ids.tolist() == [[64, 128, 0, 5, 64, 64], [64, 128, 0, 24, 64, 64]]


def test_w_h_without_buckets_trains_at_exactly_that_size(compose_tiny, tmp_path):
    """sd-scripts trains resolution "512,650" with enable_bucket=false at 512×650 (650 is no multiple of 8: the VAE
    gives an 81-row latent and the UNet sizes its upsamplings to it); here 64×76 on the tiny model."""
    data = tmp_path / "data"
    make_folder(data, "1_a", [(64, 96), (100, 80)], ["a, b"])
    tr = trainer_for(compose_tiny("sd15_character", "dataset.resolution=[64,76]", "dataset.enable_bucket=false",
                                  data=data))
    assert {im.placement.bucket for im in tr.data.images} == {(64, 76)}
    result = tr.run()
    assert tr.caches.latents.get(0, False).shape[-2:] == (9, 8)  # 76 rows → 9 latent rows, 64 columns → 8
    with safe_open(str(result.lora_files[-1]), "pt") as f:
        assert f.metadata()["ss_resolution"] == "(64, 76)"
