"""`lorafw plan`: the guide's arithmetic from the real dataset, and its advice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import lorafw_main_without_torch, make_folder
from lorafw.config.compose import compose_dict
from lorafw.config.validate import spec_from_dict
from lorafw.data.dataset import build, reg_repeats
from lorafw.data.folders import scan
from lorafw.planning.plan import MULTI_TABLE, PDXL_TABLE, SD15_TABLE, advise, make_plan, render


def spec_for(root: Path, *extra: str, recipe: str = "sd15_character"):
    spec, _ = spec_from_dict(compose_dict(recipe, [f"dataset.root={root}", "base_model.path=-", *extra]), need_model=False)
    return spec


def plan_for(root: Path, *extra: str, recipe: str = "sd15_character"):
    spec = spec_for(root, *extra, recipe=recipe)
    folders, warnings = scan(spec.dataset)
    return make_plan(build(folders, spec.dataset), spec, warnings)


@pytest.mark.parametrize("images,repeats,epochs,batch,steps", [(20, 10, 10, 2, 1000), (100, 3, 10, 2, 1500), (400, 1, 10, 2, 2000)])
def test_sd15_table_rows_from_real_folders(tmp_path, images, repeats, epochs, batch, steps):
    make_folder(tmp_path, f"{repeats}_kafka", [(64, 64)] * images, ["kafka, 1girl"])
    p = plan_for(tmp_path, "dataset.resolution=64", "dataset.min_bucket_reso=64", f"train.batch_size={batch}", f"train.epochs={epochs}")
    assert (p.T, p.guide_total_steps, p.total_steps, p.reasons) == (images * repeats, steps, steps, [])
    assert (p.advice.sd15["repeats"], p.advice.sd15["epochs"]) == (repeats, epochs)


def test_the_remainder_row_explains_itself(tmp_path):
    make_folder(tmp_path, "1_many", [(64, 64)] * 1000, ["a"])
    p = plan_for(tmp_path, "dataset.resolution=64", "dataset.min_bucket_reso=64", "train.batch_size=3")
    assert p.guide_total_steps == pytest.approx(3333.33, abs=0.01) and p.total_steps == 3340
    assert p.reasons == ["1 of 1 bucket(s) end with a short batch (batches never mix buckets): +0.666667 batches per epoch"]


def test_multi_bucket_remainders_and_accumulation(tmp_path):
    make_folder(tmp_path, "3_a", [(64, 64)] * 3 + [(192, 64)] * 2, ["a"])
    p = plan_for(tmp_path, "dataset.resolution=128", "dataset.min_bucket_reso=64", "dataset.max_bucket_reso=256",
                 "train.batch_size=2", "train.gradient_accumulation_steps=2", "train.epochs=4")
    assert (p.T, p.batches_per_epoch, p.steps_per_epoch, p.total_steps) == (15, 8, 4, 16)
    assert p.buckets == {"128x128": 9, "192x64": 6}
    assert any("1 of 2 bucket(s) end with a short batch" in r and "+0.5" in r for r in p.reasons)
    assert any("gradient accumulation 2" in r and "(8 → 4)" in r for r in p.reasons)


def test_a_w_h_resolution_makes_kohyas_buckets_of_that_area(tmp_path):
    # area 128·192 = 24576 (not 128²): sd-scripts' make_bucket_resolutions((128, 192), 64, 256, 64) holds (128, 128),
    # (64, 256), (256, 64), (128, 192), (192, 128)
    make_folder(tmp_path, "2_a", [(64, 64), (128, 192), (200, 130), (64, 300)], ["a"])
    p = plan_for(tmp_path, "dataset.resolution=[128,192]", "dataset.min_bucket_reso=64", "dataset.max_bucket_reso=256",
                 "train.batch_size=1", "train.epochs=1")
    assert p.buckets == {"128x128": 2, "128x192": 2, "192x128": 2, "64x256": 2}
    square = plan_for(tmp_path, "dataset.resolution=128", "dataset.min_bucket_reso=64", "dataset.max_bucket_reso=256",
                      "train.batch_size=1", "train.epochs=1")
    assert "128x192" not in square.buckets  # 128·192 is over 128²
    exact = plan_for(tmp_path, "dataset.resolution=[128,192]", "dataset.enable_bucket=false", "train.epochs=1")
    assert exact.buckets == {"128x192": 8}  # without buckets: exactly W×H


def test_data_parallel_processes_divide_the_steps(tmp_path):
    """Global batch = batch × processes × accumulation; steps = ceil(batches ÷ (processes × accumulation))."""
    from lorafw.planning.plan import render

    make_folder(tmp_path, "3_a", [(64, 64)] * 3 + [(192, 64)] * 2, ["a"])
    base = ("dataset.resolution=128", "dataset.min_bucket_reso=64", "dataset.max_bucket_reso=256", "train.batch_size=2",
            "train.epochs=4")
    for w, a, spe in [(1, 1, 8), (2, 1, 4), (3, 1, 3), (2, 2, 2), (4, 2, 1), (16, 1, 1)]:
        p = plan_for(tmp_path, *base, f"train.num_processes={w}", f"train.gradient_accumulation_steps={a}")
        assert (p.batches_per_epoch, p.steps_per_epoch, p.total_steps, p.processes) == (8, spe, 4 * spe, w)
    p = plan_for(tmp_path, *base, "train.num_processes=2", "train.gradient_accumulation_steps=2")
    assert any("2 processes × gradient accumulation 2" in r and "global batch 8" in r and "(8 → 2)" in r for r in p.reasons)
    assert "2 processes: global batch 8" in render(p)


def test_advice_follows_the_guides_tables():
    for images, repeats, epochs, batch in SD15_TABLE:
        a = advise({"x": images})
        assert (a.sd15["repeats"], a.sd15["epochs"], a.sd15["batch"]) == (repeats, epochs, batch)
    for images, epochs in PDXL_TABLE:
        a = advise({"x": images})
        assert (a.pdxl["repeats"], a.pdxl["epochs"], a.pdxl["steps"]) == (2, epochs, images * epochs)
    assert advise({"x": 20}).prodigy == {"repeats": 5, "epochs": 20, "batch": 2, "steps": 1000}  # "20 images → 5 repeats"
    assert advise({"x": 40}).sd15["row_images"] == 20 and advise({"x": 45}).sd15["row_images"] == 100  # log scale
    assert advise({"x": 45}).pdxl["row_images"] == 40


def test_balanced_repeats_for_the_guides_four_outfits():
    a = advise({"outfit1": 20, "outfit2": 33, "outfit3": 100, "outfit4": 50})
    assert a.balance["repeats"] == {"outfit1": 5, "outfit2": 3, "outfit3": 1, "outfit4": 2}
    assert (a.balance["T"], a.balance["epochs"], a.balance["steps"]) == (399, 10, 2000)
    for t, epochs in MULTI_TABLE:  # "T≈200 → 17 epochs, T≈300 → 12, T≈400 → 10"
        assert advise({"a": t // 2, "b": t // 2}).balance["epochs"] == epochs
    assert advise({"solo": 50}).balance is None


def test_kohya_regularisation_counting():
    assert reg_repeats([0, 1, 2], [1, 1, 1], 7) == [3, 2, 2]  # 3 items, then one more each in turn to reach 7
    assert reg_repeats([0, 1, 2, 3], [5, 5, 5, 5], 7) == [5, 5, 0, 0]  # stops as soon as it matches
    assert reg_repeats([0], [2], 0) == [0]
    assert reg_repeats([], [], 10) == []


def test_plan_counts_regularisation_images(tmp_path):
    make_folder(tmp_path / "train", "2_kafka", [(64, 64)] * 5, ["kafka"])
    make_folder(tmp_path / "reg", "1_woman", [(64, 64)] * 3, ["1girl"])
    p = plan_for(tmp_path / "train", f"dataset.reg_root={tmp_path / 'reg'}", "dataset.resolution=64", "dataset.min_bucket_reso=64")
    assert (p.T, p.reg_items, p.batches_per_epoch) == (10, 10, 10)
    assert [(f.name, f.items, f.is_reg) for f in p.folders] == [("2_kafka", 10, False), ("1_woman", 10, True)]
    assert p.guide_steps_per_epoch == 5 and "3 regularisation image(s) add 10 items per epoch" in p.reasons[0]


def test_render_and_json(tmp_path):
    for name, n in (("1_outfit1", 20), ("1_outfit2", 33), ("1_outfit3", 100), ("1_outfit4", 50)):
        make_folder(tmp_path, name, [(64, 64)] * n, ["zeta"])
    p = plan_for(tmp_path, "dataset.resolution=64", "dataset.min_bucket_reso=64")
    text = render(p, "sd15_character")
    assert "T = images × repeats" in text and "203" in text
    assert "balanced      repeats 1_outfit1: 5, 1_outfit2: 3, 1_outfit3: 1, 1_outfit4: 2 → T = 399 → 10 epochs" in text
    back = json.loads(json.dumps(p.to_json()))
    assert back["T"] == 203 and back["advice"]["balance"]["T"] == 399


def test_plan_command_imports_no_torch_and_needs_no_model(tmp_path):
    make_folder(tmp_path, "3_kafka", [(64, 64)] * 4, ["kafka"])
    data = json.loads(lorafw_main_without_torch("plan", "--json", "+recipe=pdxl", f"dataset.root={tmp_path}"))
    assert data["T"] == 12 and data["batch_size"] == 2


def test_plan_prints_the_prediction_type_and_where_it_comes_from(tmp_path, tiny_xl_vpred_model, tiny_xl_model):
    make_folder(tmp_path / "d", "3_kafka", [(64, 64)] * 4, ["kafka"])
    data = json.loads(lorafw_main_without_torch("plan", "--json", "+recipe=pdxl", f"dataset.root={tmp_path / 'd'}",
                                                f"base_model.path={tiny_xl_vpred_model}"))
    assert data["objective"]["prediction_type"] == "v_prediction" and data["objective"]["zero_terminal_snr"] is True
    assert "v_pred marker" in data["objective"]["source"]
    p = plan_for(tmp_path / "d", recipe="pdxl")
    text = render(p)
    assert "prediction type   epsilon   from the default" in text and "base_model.path not read" in text
    p = plan_for(tmp_path / "d", f"base_model.path={tiny_xl_model}", "train.prediction_type=v_prediction", recipe="pdxl")
    assert p.objective["prediction_type"] == "v_prediction" and p.objective["source"] == "train.prediction_type"
    p = plan_for(tmp_path / "d", f"base_model.path={tiny_xl_vpred_model}", "train.prediction_type=epsilon", recipe="pdxl")
    assert "refused" in render(p) and "force_prediction_type" in p.objective["problem"]


def test_plan_shows_the_lr_curve(tmp_path):
    make_folder(tmp_path, "10_kafka", [(64, 64)] * 10, ["kafka"])
    p = plan_for(tmp_path, "dataset.resolution=64", "dataset.min_bucket_reso=64", "scheduler=constant_with_warmup",
                 "scheduler.warmup_ratio=0.1", "train.batch_size=1", "train.epochs=2", "optimizer.unet_lr=2e-4")
    assert p.total_steps == 200
    pts = dict(p.lr_points)
    assert pts[0] == 0 and pts[20] == pytest.approx(2e-4) and pts[199] == pytest.approx(2e-4)
    assert "lr curve (optimizer step: UNet lr)  0: 0   20: 0.0002" in render(p)
    q = plan_for(tmp_path, "dataset.resolution=64", "dataset.min_bucket_reso=64", "optimizer=adafactor",
                 "optimizer.args.relative_step=true", "optimizer.text_encoder_lr=${.lr}")
    assert not q.lr_points and "Adafactor computes its own lr" in render(q)


def test_an_anima_plan_says_rectified_flow_before_any_file_is_read(tmp_path):
    """Anima's objective is its family's own (flow), not SD's ε default, even with base_model.path not read."""
    make_folder(tmp_path / "d", "3_kafka", [(64, 64)] * 4, ["kafka"])
    p = plan_for(tmp_path / "d", "base_model.text_encoder=/m/qwen.safetensors", "base_model.vae=/m/vae.safetensors",
                 "train.prediction_type=auto",
                 recipe="anima_character")
    assert p.objective["prediction_type"] == "flow"
