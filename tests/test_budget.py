"""Step budgets (train.max_steps, planning/budget.py) against sd-scripts' own counting, kohya's retention rules,
and runs that stop mid-epoch: files, metadata, summary, report, plan, import and export."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import make_folder, tiny_overrides

from lorafw.config.compose import compose, compose_dict
from lorafw.config.validate import spec_from_dict
from lorafw.planning.budget import KOHYA_DEFAULT_STEPS, budget, epoch_to_remove, step_file_name, step_to_remove


def kohya_run(batches: int, processes: int, accumulation: int, max_train_epochs: int | None,
              max_train_steps: int = KOHYA_DEFAULT_STEPS) -> tuple[int, int, list[int]]:
    """train_network.py restated: (num_train_epochs, max_train_steps, optimizer steps taken in each epoch), the
    loop simulated batch by batch on one process's sharded dataloader (accelerate syncs every `accumulation`
    batches and at the dataloader's end; the loop breaks once global_step reaches max_train_steps)."""
    if max_train_epochs is not None:
        max_train_steps = max_train_epochs * math.ceil(batches / processes / accumulation)
    per_process = math.ceil(batches / processes)  # len(train_dataloader) after accelerator.prepare
    num_train_epochs = math.ceil(max_train_steps / math.ceil(per_process / accumulation))
    global_step, taken = 0, []
    for _ in range(num_train_epochs):
        n = 0
        for step in range(per_process):
            if (step + 1) % accumulation == 0 or step + 1 == per_process:
                global_step += 1
                n += 1
            if global_step >= max_train_steps:
                break
        taken.append(n)
    return num_train_epochs, max_train_steps, taken


@pytest.mark.parametrize("processes", [1, 2, 3])
@pytest.mark.parametrize("accumulation", [1, 2, 4])
def test_the_budget_counts_as_sd_scripts_does(processes, accumulation):
    for batches in range(1, 30):
        for epochs in (None, 1, 2, 5):
            for max_steps in (1, 2, 3, 7, 10, 31, 64):
                b = budget(batches, processes * accumulation, epochs, max_steps)
                e, total, taken = kohya_run(batches, processes, accumulation, epochs, max_steps)
                assert (b.epochs, b.total_steps) == (e, total), (batches, epochs, max_steps)
                assert [b.steps_in_epoch(i + 1) for i in range(b.epochs)] == taken
                assert b.partial == (taken[-1] < b.steps_per_epoch)
                assert b.by == ("epochs" if epochs is not None else "steps")


def test_neither_count_given_is_kohyas_1600_steps():
    b = budget(48, 1, None, None)
    assert (b.total_steps, b.epochs, b.last_epoch_steps, b.partial) == (1600, 34, 16, True)
    assert kohya_run(48, 1, 1, None)[:2] == (34, 1600)


def test_epochs_win_over_max_steps_and_the_spec_says_so():
    assert budget(10, 1, 3, 7).total_steps == 30  # max_train_epochs overrides max_train_steps
    overrides = ["dataset.root=/d", "base_model.path=-", "train.max_steps=7"]
    _, notes = spec_from_dict(compose_dict("sd15_character", overrides), need_model=False, check_paths=False)
    assert any("train.max_steps=7 is not used" in n and "train.epochs=null" in n for n in notes)


def test_kohyas_file_names():
    assert step_file_name("toy", 150) == "toy-step00000150.safetensors"


def kept_steps(final: int, every: int, last_n: int | None) -> list[int]:
    saved: list[int] = []
    for s in range(1, final + 1):
        if s % every == 0:
            saved.append(s)
            gone = step_to_remove(s, every, last_n)
            if gone in saved:
                saved.remove(gone)
    return saved


def test_save_last_n_steps_keeps_the_files_within_the_last_n_steps():
    assert step_to_remove(50, 10, 30) == 10  # train_util.get_remove_step_no's own example
    assert step_to_remove(50, 10, None) is None and step_to_remove(20, 10, 30) is None
    for every in range(1, 8):
        for last_n in range(every, 30):
            for final in range(every, 60):
                assert kept_steps(final, every, last_n) == [s for s in range(every, final + 1, every)
                                                            if s >= final - final % every - last_n]


def test_save_last_n_epochs_keeps_the_last_n_saves():
    for every in range(1, 4):
        for last_n in range(1, 5):
            saved: list[int] = []
            for e in range(every, 20, every):
                saved.append(e)
                gone = epoch_to_remove(e, every, last_n)
                if gone in saved:
                    saved.remove(gone)
                assert saved == list(range(every, e + 1, every))[-last_n:]
    assert epoch_to_remove(3, 1, None) is None


# -- lorafw plan ------------------------------------------------------------------------------------------------
def test_the_plan_counts_a_step_budget_and_sizes_the_lr_curve_by_it(tmp_path):
    from lorafw.data.dataset import build
    from lorafw.data.folders import scan
    from lorafw.planning.plan import make_plan, render

    make_folder(tmp_path, "3_a", [(64, 64)] * 5, ["a"])  # 15 items, batch 2: 8 steps per epoch
    spec, _ = spec_from_dict(compose_dict("sd15_character", [
        f"dataset.root={tmp_path}", "base_model.path=-", "dataset.resolution=64", "dataset.min_bucket_reso=64",
        "train.batch_size=2", "train.epochs=null", "train.max_steps=20", "scheduler=cosine",
        "scheduler.warmup_ratio=0.1"]), need_model=False)
    folders, warnings = scan(spec.dataset)
    p = make_plan(build(folders, spec.dataset), spec, warnings)
    assert (p.steps_per_epoch, p.epochs, p.total_steps, p.last_epoch_steps, p.by) == (8, 3, 20, 4, "steps")
    assert [s for s, _ in p.lr_points] == [0, 2, 10, 19]  # warmup 10% of 20, cosine over the 20 steps trained
    text = render(p)
    assert "3 epochs from 20 steps" in text and "the last cut short at 4" in text


# -- a run with a step budget -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def budget_run(tmp_path_factory, tiny_model, tiny_dataset):
    """3 training images (one held out) × 2 repeats, batch 2: 3 steps per epoch; 10 steps = 4 epochs, the last
    one 1 step."""
    from lorafw.run import train

    out = tmp_path_factory.mktemp("budget") / "run"
    spec = compose("sd15_character", tiny_overrides(tiny_model, tiny_dataset, out) + [
        "train.epochs=null", "train.max_steps=10", "output.save_every_n_steps=3", "output.save_last_n_steps=4",
        "output.save_last_n_epochs=1", "validation.split=0.25", "scheduler=cosine", "scheduler.warmup_ratio=0.2"])
    return train(spec)


def test_a_step_budget_stops_mid_epoch_with_kohyas_files(budget_run):
    from safetensors import safe_open

    run = budget_run.run_dir
    assert budget_run.steps == 10
    rec = json.loads((run / "run.json").read_text())
    assert (rec["status"], rec["steps"], rec["plan"]["total_steps"], rec["plan"]["epochs"]) == ("finished", 10, 10, 4)
    # steps 3, 6, 9 saved; saving 9 removed 9 - 4 - 1 → 3; epoch files: save_last_n_epochs=1 keeps 3, and the last
    names = sorted(p.name for p in run.glob("*.safetensors"))
    step_files = ["toy-step00000006.safetensors", "toy-step00000009.safetensors"]
    assert names == ["toy-03.safetensors", "toy-04.safetensors"] + step_files
    with safe_open(str(run / "toy-04.safetensors"), "pt") as f:
        meta = f.metadata()
    counts = (meta["ss_max_train_steps"], meta["ss_num_epochs"], meta["ss_epoch"], meta["ss_steps"])
    assert counts == ("10", "4", "4", "10")
    assert meta["ss_lr_warmup_steps"] == "2"  # 0.2 of the 10 steps the run trained
    with safe_open(str(run / step_files[0]), "pt") as f:
        assert (f.metadata()["ss_steps"], f.metadata()["ss_epoch"]) == ("6", "2")
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    lrs = [m["lr_unet"] for m in metrics if m["kind"] == "step"]
    assert len(lrs) == 10 and lrs[0] == 0 and lrs[2] == max(lrs) > lrs[-1]  # warmup: 2 of the 10 steps, then cosine


def test_the_summary_and_report_of_a_partial_last_epoch(budget_run):
    run = budget_run.run_dir
    s = json.loads((run / "run_summary.json").read_text())
    assert [e["epoch"] for e in s["epochs"]] == [1, 2, 3, 4] and s["steps"] == 10
    assert [e["file"] for e in s["epochs"]] == [None, None, "toy-03.safetensors", "toy-04.safetensors"]  # removed
    assert "toy-step00000009.safetensors" in s["files"] and "toy-step00000003.safetensors" not in s["files"]
    assert s["recommended"]["epoch"] in (3, 4) and s["recommended"]["basis"] == "validation loss"
    html = (run / "report.html").read_text()
    assert '<section id="recommended">' in html and s["recommended"]["file"] in html
    assert "epochs: <b>4</b>" in html and "total steps: <b>10</b>" in html


# -- import, export, round trip ---------------------------------------------------------------------------------
def imported(tmp_path: Path, text: str, name: str = "c.toml"):
    from lorafw.interop.importer import import_config, write_recipe

    f = tmp_path / name
    f.write_text(text)
    imp = import_config(f)
    recipe = write_recipe(imp, "x", tmp_path / "r.yaml", lenient=True)
    spec, _ = spec_from_dict(compose_dict(str(recipe), ["dataset.root=/d", "base_model.path=/m.safetensors"]),
                             check_paths=False, need_model=False)
    return imp, spec


@pytest.mark.parametrize("lines,epochs,steps", [
    ("max_train_steps = 320\n", None, 320),
    ("", None, 1600),  # neither: kohya's default
    ("max_train_epochs = 4\n", 4, None),
    ("max_train_epochs = 4\nmax_train_steps = 320\n", 4, 320),  # both kept; epochs wins, in lorafw as in kohya
])
def test_a_toml_imports_its_run_length(lines, epochs, steps, tmp_path):
    imp, s = imported(tmp_path, lines + "resolution = 512\nsave_every_n_steps = 50\nsave_last_n_steps = 100\n"
                                        "save_last_n_epochs = 2\n")
    assert imp.not_honoured == []
    assert (s.train.epochs, s.train.max_steps) == (epochs, steps)
    assert (s.output.save_every_n_steps, s.output.save_last_n_steps, s.output.save_last_n_epochs) == (50, 100, 2)


def test_a_gui_json_with_max_train_steps_imports(tmp_path):
    imp, s = imported(tmp_path, (Path(__file__).parent / "fixtures" / "import" / "gui_sdxl_steps.json").read_text(),
                      "p.json")
    assert imp.not_honoured == []
    assert (s.train.epochs, s.train.max_steps, s.output.save_every_n_steps, s.output.save_last_n_steps) == (
        None, 160, None, None)  # the GUI's 0 = off


@pytest.mark.parametrize("extra", [["train.epochs=null", "train.max_steps=250", "output.save_every_n_steps=25",
                                    "output.save_last_n_steps=75"],
                                   ["train.epochs=null", "train.max_steps=null"],
                                   ["train.epochs=6", "output.save_last_n_epochs=3"]])
def test_import_export_import_keeps_the_run_length(extra, tmp_path):
    import tomli_w

    from lorafw.interop.importer import import_config, write_recipe
    from lorafw.interop.kohya import export_kohya

    spec, _ = spec_from_dict(compose_dict("sd15_character", ["base_model.path=/m.safetensors", "dataset.root=/d",
                                                             *extra]), check_paths=False, need_model=False)
    cfg, ds = export_kohya(spec, 100, [("/d/2_x", 2, {})])
    (tmp_path / "c.toml").write_text(tomli_w.dumps(cfg))
    (tmp_path / "d.toml").write_text(tomli_w.dumps(ds))
    keys = ("train.epochs", "train.max_steps", "output.save_every_n_steps", "output.save_last_n_steps",
            "output.save_last_n_epochs")

    def values(s) -> dict:
        return {k: getattr(getattr(s, k.split(".")[0]), k.split(".")[1]) for k in keys}

    want = values(spec)
    for exact in (True, False):  # with the [lorafw] section, and as sd-scripts alone reads the file
        if not exact:
            cfg.pop("lorafw")
            if want["train.epochs"] is None and want["train.max_steps"] is None:
                want["train.max_steps"] = KOHYA_DEFAULT_STEPS  # what both trainers run; the recipe now says it
        (tmp_path / "c.toml").write_text(tomli_w.dumps(cfg))
        imp = import_config(tmp_path / "c.toml", tmp_path / "d.toml")
        assert imp.not_honoured == []
        back, _ = spec_from_dict(compose_dict(str(write_recipe(imp, "x", tmp_path / "r.yaml")),
                                              ["base_model.path=/m.safetensors"]), check_paths=False, need_model=False)
        assert values(back) == want, exact


def test_lorafw_keys_lists_the_budget_keys(capsys):
    from lorafw.cli import main

    assert main(["keys", "output.save_"]) == 0
    out = capsys.readouterr().out
    assert "save_every_n_steps" in out and "save_last_n_steps" in out and "save_last_n_epochs" in out
    assert main(["keys", "train.max_steps"]) == 0
    assert "max_train_steps" in capsys.readouterr().out
