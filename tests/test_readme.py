"""The README is the front door: short, every link leads somewhere, every recipe is listed, and every command it
shows runs — `make demo` / `make test` as make would run them, and each `lorafw` line on the tiny model."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lorafw.config.shipped import recipe_names

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DEMO_PICTURE = "docs/assets/demo.png"  # the demo's picture, which `lorafw demo` writes (the demo branch adds it)


def text() -> str:
    return README.read_text()


def bash_lines(prefix: str) -> list[str]:
    """The README's command lines in ```bash blocks that start with `prefix` (comments stripped)."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text(), re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith(prefix):
                lines.append(line)
    return lines


def in_git(path: str) -> bool:
    p = subprocess.run(["git", "ls-files", "--error-unmatch", path], cwd=ROOT, capture_output=True)
    return p.returncode == 0


def test_the_readme_is_short():
    assert len(README.read_bytes()) <= 12 * 1024, "the README is a front page: move detail into docs/"


def test_every_link_in_the_readme_leads_somewhere():
    links = [t for t in re.findall(r"\]\(([^)\s]+)\)", text()) if "://" not in t]
    assert DEMO_PICTURE in links and "docs/index.md" in links
    for target in links:
        if target == DEMO_PICTURE and not in_git(DEMO_PICTURE):
            continue  # until `lorafw demo`'s picture is committed; once it is, it must exist like every link
        assert (ROOT / target.split("#")[0]).exists(), target


def test_the_readme_lists_every_shipped_recipe():
    listed = re.findall(r"^- `([a-z0-9_]+)`: ", text(), re.M)
    assert sorted(listed) == recipe_names(), "the README's recipe list is conf/recipe/*.yaml, one line each"


def test_the_comparison_names_what_lorafw_adds():
    table = text().split("## What lorafw adds")[1].split("\n## ")[0]
    assert "| lorafw | kohya sd-scripts | OneTrainer | SimpleTuner |" in table
    for feature in ("run_summary.json", "report.html", "lorafw import", "lorafw plan", "bit-identical"):
        assert feature in table, feature


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_the_two_make_commands_do_what_the_readme_says(tmp_path):
    """`make -n` prints what each would run: demo installs lorafw's runtime only, test adds the [test] extra, and
    after `make demo` (its stamp present) `make test` still installs the test extra."""
    assert bash_lines("make ") == ["make demo", "make test"]

    def dry(target: str, venv: Path) -> str:
        # CI runs this under `make test`: a nested make prints "Entering directory" lines unless told not to
        env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
        return subprocess.run(["make", "--no-print-directory", "-n", target, f"VENV={venv}"], cwd=ROOT, env=env,
                              capture_output=True, text=True, check=True).stdout

    fresh = tmp_path / "venv"
    demo = dry("demo", fresh)
    assert "pip install -q torch" in demo and "pip install -q -e .\n" in demo and "[test]" not in demo
    assert demo.rstrip().endswith(f"{fresh}/bin/lorafw demo")
    test = dry("test", fresh)
    assert 'pip install -q -e ".[test]"' in test and test.rstrip().endswith("-m pytest -q")
    fresh.mkdir()
    (fresh / ".installed-runtime").touch()  # as `make demo` leaves it
    after_demo = dry("test", fresh)
    assert 'pip install -q -e ".[test]"' in after_demo and "pip install -q torch" not in after_demo


KOHYA_TOML = """pretrained_model_name_or_path = "{model}"
train_data_dir = "{data}"
resolution = "64"
max_train_epochs = 1
network_module = "networks.lora"
network_dim = 4
network_alpha = 2
output_name = "my_lora"
"""

SMALL = ["dataset.resolution=64", "dataset.min_bucket_reso=64", "dataset.max_bucket_reso=128", "train.epochs=2"]


@pytest.mark.slow
def test_every_lorafw_command_in_the_readme_runs(tmp_path, tiny_model, tiny_dataset, monkeypatch):
    """Each `lorafw` line, with the README's placeholders filled in by the tiny model, dataset and run: the training
    line trains (shrunk to 64 px and two epochs, killed mid-epoch 2), `resume` finishes it, `grid` and `report` read
    it, `import` reads a kohya TOML and the sweep and the imported recipe are validated (`lorafw check`)."""
    from lorafw.cli import is_command_word, main

    run = tmp_path / "run"
    fill = {"~/models/animefull.safetensors": str(tiny_model), "~/data/kafka": str(tiny_dataset), "RUN_DIR": str(run)}
    lines = bash_lines("lorafw ")
    kinds = {}
    for line in lines:
        for k, v in fill.items():
            line = line.replace(k, v)
        args = shlex.split(line)[1:]
        assert not [a for a in args if "~" in a or re.search(r"\b[A-Z]+_[A-Z]+\b", a)], f"unfilled placeholder: {line}"
        first = args[0]
        kind = (first if is_command_word(first) else "sweep" if "-m" in args
                else "recipe_file" if "./" in line else "train")
        assert kind not in kinds, f"two README lines of one kind ({kind}): extend this test"
        kinds[kind] = args
    assert set(kinds) == {"train", "sweep", "grid", "report", "import", "recipe_file", "resume"}, kinds
    monkeypatch.chdir(tmp_path)

    # train, killed after step 6 (mid-epoch 2: the state of epoch 1 is saved), then `lorafw resume RUN_DIR`
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), LORAFW_FAULT="kill_at_step:6")
    p = subprocess.run([sys.executable, "-m", "lorafw", *kinds["train"], *SMALL, f"output.dir={run}"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=900,
                       preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert json.loads((run / "run.json").read_text())["status"] != "finished"
    assert main(kinds["resume"]) == 0
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    assert len(list(run.glob("*-02.safetensors"))) == 1

    assert main([*kinds["grid"], "sample.steps=2"]) == 0  # fewer sampling steps: the tiny model's noise either way
    assert list((run / "grids").glob("*.png")) and "recommended" in json.loads((run / "run_summary.json").read_text())
    assert main(kinds["report"]) == 0 and (run / "report.html").is_file()

    assert main(["check", *[a for a in kinds["sweep"] if a != "-m"]]) == 0  # every job of the sweep validated
    (tmp_path / "my_lora.toml").write_text(KOHYA_TOML.format(model=tiny_model, data=tiny_dataset))
    assert main(kinds["import"]) == 0 and (tmp_path / "my_lora.yaml").is_file()
    assert main(["check", *kinds["recipe_file"], f"output.dir={tmp_path / 'imported'}"]) == 0
