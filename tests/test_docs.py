"""The documentation site (docs/, mkdocs.yml): the generated reference pages are what tools/gen_docs.py makes from
the code now, every error the code can stop with is in them, and `mkdocs build --strict` passes (no broken link or
anchor, no page left out of the nav)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gen():
    return load_script(ROOT / "tools" / "gen_docs.py")


def test_the_generated_pages_are_current(gen):
    stale = [str(p.relative_to(ROOT)) for p in gen.stale()]
    assert not stale, f"{stale}: regenerate with python tools/gen_docs.py"


def test_the_key_reference_is_the_schema(gen):
    from lorafw.config.schema import iter_keys
    from lorafw.config.spec import RunSpec

    page = (ROOT / "docs" / "reference" / "keys.md").read_text()
    assert [k.path for k in iter_keys(RunSpec)] == re.findall(r"^\| `([^`]+)` \|", page, re.M)


def test_the_command_reference_has_every_command_and_flag(gen):
    from lorafw.cli import COMMANDS

    page = (ROOT / "docs" / "reference" / "cli.md").read_text()
    for name in COMMANDS:
        assert f"### `lorafw {name}`" in page, name
    for flag in ("--vram", "--dataset-config", "--lenient", "--embed", "--apply", "--hardness", "--markdown"):
        assert f"`{flag}" in page, flag


def test_the_error_catalogue_finds_each_kind_of_message(gen, tmp_path):
    """A raise, a problem list, a parser error and a stderr line: each shape the catalogue reads is found."""
    src = tmp_path / "mod.py"
    src.write_text(
        "import sys\n"
        "def f(x, ap):\n"
        "    problems = []\n"
        "    problems.append(f'train.epochs: must be at least 1, got {x.epochs}')\n"
        "    lines = ['not an error']\n"
        "    lines.append('train.x: a report line, not collected')\n"
        "    print(f'lorafw keys: no key starts with {x!r}', file=sys.stderr)\n"
        "    ap.error('give ' + x.shape)\n"
        "    raise ModelError(f'{x.path} is a VAE file' + (' (fp16)' if x.half else ''))\n")
    assert gen.messages(src) == ["train.epochs: must be at least 1, got {x.epochs}",
                                 "lorafw keys: no key starts with {x}", "give {…}", "{x.path} is a VAE file (fp16)"]
    page = (ROOT / "docs" / "reference" / "errors.md").read_text()
    for known in ("already holds a run; choose another output.dir", "unknown command '{word}'",
                  "is a pickle checkpoint", "without a REPEATS_ prefix"):
        assert known in page, known


def test_the_notebook_menu_offers_every_shipped_recipe(gen):
    """Colab's dropdown is the names written out in the form; tools/gen_docs.py writes them from conf/recipe/."""
    import json

    from lorafw.config.shipped import recipe_names

    nb = json.loads(gen.NOTEBOOK.read_text())
    line = next(ln for c in nb["cells"] if c["cell_type"] == "code" for ln in c["source"] if ln.startswith("RECIPE = "))
    offered = json.loads(line.split("#@param", 1)[1])
    assert offered == recipe_names()
    raw = gen.NOTEBOOK.read_text()
    without = raw.replace(', \\"sdxl_rf\\"', "")
    assert without != raw and gen.notebook_text(without) == raw  # a recipe missing from the menu is put back


def test_every_guide_page_is_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = sorted(p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md"))
    assert pages and all(f": {p}\n" in nav for p in pages), [p for p in pages if f": {p}\n" not in nav]


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None,
                    reason="mkdocs and mkdocs-material are not installed (pip install -e '.[docs]' or '.[test]')")
def test_the_site_builds_strictly(tmp_path):
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    p = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")], cwd=ROOT,
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert (tmp_path / "site" / "reference" / "keys" / "index.html").is_file()


def test_every_key_the_guide_names_exists():
    """A key renamed or removed in lorafw/config/spec.py fails here until the hand-written pages follow it."""
    from lorafw.config.schema import iter_keys
    from lorafw.config.spec import RunSpec

    keys = {k.path for k in iter_keys(RunSpec)}
    sections = {k.split(".")[0] for k in keys if "." in k}
    files = [*(ROOT / "docs" / "guide").glob("*.md"), ROOT / "docs" / "models.md", ROOT / "docs" / "index.md",
             ROOT / "README.md"]
    unknown, named = set(), set()
    for f in files:
        for code in re.findall(r"`([^`\n]+)`", f.read_text()):
            for word in code.split():
                m = re.match(r"^\+?([a-z_]+(?:\.[a-z_0-9]+)+)(?:=|$)", word)
                if not m or m[1].split(".")[0] not in sections or m[1].rsplit(".", 1)[1] in ("html", "json", "csv"):
                    continue
                named.add(m[1])
                if m[1] not in keys and not any(k.startswith(m[1] + ".") for k in keys):
                    unknown.add(f"{f.relative_to(ROOT)}: {m[1]}")
    assert len(named) > 80 and not unknown, sorted(unknown)
