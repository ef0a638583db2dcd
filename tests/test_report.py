"""report.html, the recommendation in run_summary.json, `lorafw report`, compare's ranking and TensorBoard's grid
entries — on real tiny runs; and the page in a real headless Chromium (slow)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from conftest import make_folder, tiny_overrides
from lorafw.config.compose import compose

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

PROMPTS = ["toy, white background --d 3 --s 4 --w 64 --h 64", "toy, circle --d 5 --s 4 --w 64 --h 64"]
CAPTIONS = ["toy, long hair, red theme, white background", "toy, long hair, red theme", "toy, long hair, blue theme"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "toy"
    make_folder(root, "2_toy", [(64, 64)] * 6, CAPTIONS)
    return root


@pytest.fixture(scope="module")
def tagger(tmp_path_factory) -> Path:
    from lorafw.prep.tiny_tagger import build_tiny_tagger

    return build_tiny_tagger(tmp_path_factory.mktemp("wd") / "wd-tiny", size=32)


def train_run(model: Path, data: Path, out: Path, *extra: str):
    from lorafw.run import train

    spec = compose("sd15_character", tiny_overrides(model, data, out) + [
        "train.epochs=3", "optimizer.lr=5e-3", "validation.split=0.34", "sample.every_n_epochs=1",
        f"sample.prompts={json.dumps(PROMPTS)}", *extra])
    return train(spec)


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model, dataset):
    """A finished 3-epoch run with validation loss and samples; its report was written at the end."""
    return train_run(tiny_model, dataset, tmp_path_factory.mktemp("report") / "run").run_dir


@pytest.fixture(scope="module")
def gridded(run, tagger):
    """The same run after `lorafw grid` with the tiny tagger (scores, recommendation, report again)."""
    from lorafw.cli import main

    assert main(["grid", str(run), "grid.weights=[1.0,0.5]", f"grid.tagger={tagger}", "grid.concept_share=0.6"]) == 0
    return run


def img_sources(html: str) -> list[str]:
    return re.findall(r'<img[^>]* src="([^"]+)"', html)


def test_the_end_of_a_run_writes_the_report_and_a_loss_based_recommendation(run):
    summary = json.loads((run / "run_summary.json").read_text())
    rec = summary["recommended"]
    vals = {e["epoch"]: e["val_loss"] for e in summary["epochs"]}
    assert rec["basis"] == "validation loss" and rec["weight"] == 1.0
    assert rec["epoch"] == min(vals, key=vals.get) and rec["file"] == f"toy-{rec['epoch']:02d}.safetensors"
    assert f"{vals[rec['epoch']]:.4f}" in rec["why"] and "validation loss alone" in rec["why"]
    html = (run / "report.html").read_text()
    for section in ("recommended", "training", "grid", "samples", "dataset", "import", "config", "timings"):
        assert f'<section id="{section}">' in html
    assert "<script" not in html and "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in html and "No grid yet" in html
    assert html.count("<svg") >= 5  # loss, lr, per-epoch loss, buckets, tags
    assert "Use toy-0" in html and escape_q(rec["why"]) in html
    srcs = img_sources(html)
    assert len(srcs) == 6 and all((run / s).is_file() for s in srcs)  # 2 prompts × 3 epochs of samples, linked
    assert "2_toy" in html and "64x64" in html and "long hair" in html  # folders, buckets, tags
    assert "optimizer:" in html and "torch" in html  # the resolved config and the versions


def escape_q(text: str) -> str:
    from html import escape

    return escape(text)


def test_grid_scores_the_cells_and_the_report_shows_them(gridded):
    scores = json.loads((gridded / "grids" / "scores.json").read_text())
    assert len(scores["cells"]) == 3 * 2 and scores["concept"] == ["long hair", "red theme"]
    assert scores["prompts"][0]["known"] == ["white background"]
    assert all(c["fidelity"] is not None and c["adherence"] is not None and c["similarity"] is not None
               for c in scores["cells"])
    summary = json.loads((gridded / "run_summary.json").read_text())
    rec = summary["recommended"]
    assert rec == scores["recommended"] and rec["basis"] == "tagger + validation loss"
    assert summary["grid_scores"] == "grids/scores.json" and "concept fidelity" in rec["why"]
    html = (gridded / "report.html").read_text()
    assert html.count('class="best"') == 2  # the recommended cell, highlighted under both prompts
    assert "recommended</span>" in html and "Concept tags" in html and "long hair, red theme" in html
    srcs = img_sources(html)
    assert len(srcs) == 6 + 12 + 1 and all((gridded / s).is_file() for s in srcs)  # samples, cells, the recommended


def test_tensorboard_gets_the_grid_images_and_scores(gridded):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(gridded / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    assert {"grid/prompt-00", "grid/prompt-01"} <= set(acc.Tags()["images"])
    scalars = set(acc.Tags()["scalars"])
    assert {"grid/fidelity/w1", "grid/adherence/w0.5", "grid/score/w1", "grid/similarity/w1"} <= scalars
    assert [e.step for e in acc.Scalars("grid/fidelity/w1")] == [1, 2, 3]  # one value per epoch


def test_lorafw_report_command_and_embedding(gridded, tmp_path, capsys):
    from lorafw.cli import main

    copy = tmp_path / "copy"
    shutil.copytree(gridded, copy)
    assert main(["report", str(copy), "--embed"]) == 0
    assert f"lorafw report: {copy / 'report.html'}" in capsys.readouterr().out
    html = (copy / "report.html").read_text()
    srcs = img_sources(html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)  # one file to share
    assert main(["report"]) == 2
    assert main(["report", str(tmp_path / "nothing")]) != 0
    assert "not a lorafw run or sweep folder" in capsys.readouterr().err


def test_the_end_of_run_hook_follows_report_enabled(run, tmp_path):
    import dataclasses

    from lorafw.config.compose import load_spec
    from lorafw.run import write_report_at_end

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "report.html").unlink()
    spec = load_spec(copy, check_paths=False)
    spec = dataclasses.replace(spec, output=dataclasses.replace(spec.output, dir=str(copy)))
    off = dataclasses.replace(spec, report=dataclasses.replace(spec.report, enabled=False))
    assert write_report_at_end(off) is None and not (copy / "report.html").exists()
    assert write_report_at_end(spec) == copy / "report.html" and (copy / "report.html").is_file()
    (copy / "run.json").unlink()  # a run that never started (a bad config): no page, no warning
    assert write_report_at_end(spec) is None


@pytest.fixture(scope="module")
def imported_run(tmp_path_factory, tiny_model, dataset):
    """A run of a recipe written by a real `lorafw import --lenient` of a kohya TOML with a setting lorafw lacks."""
    from lorafw.cli import main
    from lorafw.run import train

    tmp = tmp_path_factory.mktemp("imported")
    src = tmp / "kohya.toml"
    src.write_text(f'pretrained_model_name_or_path = "{tiny_model}"\ntrain_data_dir = "{dataset}"\nmax_train_epochs = 1\n'
                   'resolution = 64\nnetwork_dim = 4\nfancy_option = true\nlogging_dir = "./logs"\n')
    recipe = tmp / "imported.yaml"
    assert main(["import", str(src), "--out", str(recipe)]) == 2 and not recipe.exists()  # refused: fancy_option
    assert main(["import", str(src), "--out", str(recipe), "--lenient"]) == 0
    run = tmp / "run"
    train(compose(str(recipe), tiny_overrides(tiny_model, dataset, run) + ["report.enabled=false"]))
    return run


def test_what_a_lenient_import_left_out_reaches_the_run_and_its_report(imported_run, tmp_path):
    from lorafw.cli import main
    from lorafw.config.compose import load_spec

    refused = {"setting": "fancy_option", "value": "true", "why": "lorafw has no such setting"}
    spec = load_spec(imported_run, check_paths=False)  # config.yaml keeps the recipe's `imported` section
    assert [dataclasses.asdict(x) for x in spec.imported.not_honoured] == [refused]
    assert spec.imported.source.endswith("kohya.toml (sd-scripts TOML)")
    assert "logging_dir" in [x.setting for x in spec.imported.no_effect]
    assert main(["report", str(imported_run)]) == 0
    html = (imported_run / "report.html").read_text()
    section = html.split('<section id="import">')[1].split("</section>")[0]
    assert "Refused: changes training in kohya, left out of the recipe (--lenient) (1)" in section
    assert "<code>fancy_option</code>" in section and "lorafw has no such setting" in section
    assert "Dropped: no effect in lorafw" in section and "<code>logging_dir</code>" in section
    assert "kohya.toml (sd-scripts TOML)" in section


def test_run_json_keeps_what_the_import_left_out(imported_run):
    from lorafw.config.compose import load_spec
    from lorafw.config.spec import import_notes

    record = json.loads((imported_run / "run.json").read_text())
    assert record["imported"] == import_notes(load_spec(imported_run, check_paths=False))
    assert record["imported"]["not_honoured"][0]["setting"] == "fancy_option"


def test_the_import_section_shows_each_value_as_written():
    from lorafw.outputs.report import RunData, import_html

    rec = {"source": "x.toml (sd-scripts TOML)", "no_effect": [], "notes": ["base_model=auto: from the checkpoint"],
           "not_honoured": [{"setting": "fancy", "value": '"$\\u007bx} <b>"', "why": "lorafw has no such setting"}]}
    html = import_html(RunData(Path("."), imported=rec))
    assert "<code>&quot;${x} &lt;b&gt;&quot;</code>" in html and "Refused" in html and "Dropped" not in html
    assert "<li>base_model=auto: from the checkpoint</li>" in html
    assert "refused nothing" in import_html(RunData(Path("."), imported={**rec, "not_honoured": []}))


def test_a_run_that_was_not_imported_says_so(run):
    from lorafw.outputs.report import read_run

    d = read_run(run)
    assert d.imported is None and "imported" not in json.loads((run / "run.json").read_text())
    assert "imported:" not in (run / "config.yaml").read_text()
    assert "was not started from a `lorafw import` recipe" in (run / "report.html").read_text()


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny_model, dataset, tagger):
    """Two runs in one folder (as `-m` makes them), gridded and scored: the sweep's page and compare."""
    from lorafw.cli import main

    folder = tmp_path_factory.mktemp("sweep")
    for name, lr in (("0_lr_small", "1e-4"), ("1_lr_big", "1e-2")):
        train_run(tiny_model, dataset, folder / name, "train.epochs=1", f"optimizer.lr={lr}", "sample.every_n_epochs=0")
    assert main(["grid", str(folder), "grid.weights=[1.0,0.5]", f"grid.tagger={tagger}", "grid.concept_share=0.6"]) == 0
    return folder


def test_compare_and_the_sweep_page_rank_runs_by_their_recommended_cells(sweep):
    from lorafw.outputs.compare import collect, compare
    from lorafw.sampling.score import cells_from_json, rank

    out = compare(sweep)
    rows, _ = collect(sweep)
    cells = cells_from_json([r.recommended["scores"] | {"run": r.run} for r in rows])
    assert out["winner"] == rank(cells)[0].run  # the same rule as within a run
    assert out["why"].startswith("best tagger score") and out["sentence"]
    md = (sweep / "compare.md").read_text()
    assert f"Winner: **{out['winner']}**" in md and "Use toy-0" in md
    html = (sweep / "report.html").read_text()
    assert "Winner: " + out["winner"].replace("=", "=") in html.replace("&#x27;", "'")
    assert html.count('<a href="') >= 2 and all((sweep / s).is_file() for s in img_sources(html))
    for r in rows:  # each run has its own page, with its grid from the sweep's grids folder
        page = (sweep / r.run / "report.html").read_text()
        assert all((sweep / r.run / s).resolve().is_file() for s in img_sources(page))
        assert "grids/" in page


@pytest.mark.slow
def test_report_in_a_real_browser(gridded, sweep, tmp_path):
    from chromium import find_chromium, open_page

    if find_chromium() is None:
        assert not os.environ.get("LORAFW_REQUIRE_BROWSER"), "LORAFW_REQUIRE_BROWSER is set but no chromium is on PATH"
        pytest.skip("needs Chromium (Debian: apt-get install chromium)")
    keep = Path(os.environ.get("LORAFW_SCREENSHOTS", tmp_path))
    for name, page in (("report-run.png", gridded / "report.html"), ("report-sweep.png", sweep / "report.html")):
        res = open_page(page, keep / name, tmp_path / f"profile-{name}")
        assert res.errors == [], res.errors
        assert res.images and all(i["complete"] and i["naturalWidth"] > 0 for i in res.images), res.images
        assert res.title.startswith("lorafw") and res.svg_count >= 2
        assert (keep / name).stat().st_size > 20_000
        print(f"screenshot: {keep / name}")
    assert "Use toy-0" in open_page(gridded / "report.html", keep / "again.png", tmp_path / "p3").text
