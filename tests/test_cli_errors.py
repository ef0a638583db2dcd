"""Every error path of the `lorafw` command line: the message, the exit code, and never a traceback (subprocesses,
as users run it), plus --help on every command, --version and `lorafw keys`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import lorafw_main_without_torch, make_folder

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("LORAFW_TRACEBACK", "HYDRA_FULL_ERROR")}
    env |= {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "lorafw", *args], cwd=cwd, capture_output=True, text=True, env=env,
                          timeout=300)


def clean(p: subprocess.CompletedProcess) -> str:
    out = p.stdout + p.stderr
    assert "Traceback" not in out and "HYDRA_FULL_ERROR" not in out and "Set the environment variable" not in out, out
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cli-errors")
    (d / "bad.yaml").write_text("# @package _global_\ndefaults:\n  - sd15_character\nnetwork:\n  dim: [8\n  alpha: 4\n")
    (d / "run").mkdir()
    (d / "run" / "config.yaml").write_text("network:\n  dim: 8\n alpha: 4\n")
    (d / "bad.toml").write_text("network_dim = [8\n")
    (d / "empty" / "3_kafka").mkdir(parents=True)
    make_folder(d / "data", "2_toy", [(64, 64)], ["toy"])
    return d


# (arguments, exit code, what the output must say); FILES in an argument is the fixture's folder
CASES = [
    (["trian", "+recipe=sd15_character"], 2, ["unknown command 'trian'; did you mean train?"]),
    (["plna"], 2, ["unknown command 'plna'; did you mean plan"]),
    (["FILES/bad.yaml"], 2, ["to train with a recipe file: lorafw +recipe=FILES/bad.yaml"]),
    (["plan", "--jsn", "dataset.root=FILES/data"], 2, ["lorafw plan: unknown flag --jsn; did you mean --json?"]),
    (["plan", "--vram", "lots", "dataset.root=FILES/data"], 2, ["--vram: needs the card's memory in GB"]),
    (["lint", "--fats", "FILES/data"], 2, ["unknown flag --fats; did you mean --fast?"]),
    (["dedupe", "--aply", "FILES/data"], 2, ["unknown flag --aply; did you mean --apply?"]),
    (["dedupe", "--app", "FILES/data"], 2, ["unknown flag --app"]),  # no abbreviations of --apply
    (["tags", "fre", "FILES/data"], 2, ["unknown action 'fre'; did you mean freq?"]),
    (["--cgf", "job", "+recipe=sd15_character"], 2, ["unknown flag --cgf; did you mean --cfg?"]),
    (["--cfg", "jb", "+recipe=sd15_character"], 2, ["--cfg jb: choose one of job, hydra, all"]),
    (["+recipe=sd15_character", "network.dimm=8", "--cfg", "job"], 2, ["network.dimm: unknown key; did you mean network.dim?"]),
    (["+recipe=sd15_character", "network.dim=abc", "--cfg", "job"], 2, ["network.dim: expected an integer, got 'abc'"]),
    (["+recipe=sd15_character", "network.dim=0", "--cfg", "hydra"], 2, ["network.dim: must be at least 1"]),
    (["+recipe=sd15_character", "hydra.job.chdirr=true", "--cfg", "hydra"], 2, ["did you mean hydra.job.chdir?"]),
    (["+recipe=sd15_charcter", "--cfg", "job"], 2, ["did you mean +recipe=sd15_character?"]),
    (["+recipe=sd15_character", "optimizer=adamx", "base_model.path=/m"], 2, ["did you mean optimizer=adamw?"]),
    (["+recipe=sd15_character", "~network.dimm", "--cfg", "job"], 2, ["there is no network.dimm to delete; did you mean ~network.dim?"]),
    (["+recipe=sd15_character", "nonexist.x=1", "--cfg", "job"], 2, ["nonexist.x: unknown key; the config has no section nonexist"]),
    (["+recipe=sd15_character", "network.dim=[8", "--cfg", "job"], 2, ["network.dim=[8: cannot be read as key=value"]),
    (["+recipe=sd15_character", "hydra/launcher=nope", "--cfg", "hydra"], 2, ["hydra/launcher=nope: no such hydra/launcher option"]),
    (["+recipe=FILES/bad.yaml", "--cfg", "job"], 2, ["FILES/bad.yaml, line 6, column 8: expected ',' or ']'"]),
    (["plan", "+recipe=FILES/bad.yaml", "dataset.root=FILES/data"], 2, ["FILES/bad.yaml, line 6, column 8"]),
    (["rerun", "FILES/run"], 2, ["FILES/run/config.yaml, line 3, column 2:"]),
    (["import", "FILES/bad.toml"], 2, ["FILES/bad.toml is not valid TOML"]),
    (["import", "/nonexistent.toml"], 2, ["/nonexistent.toml does not exist"]),
    (["plan", "+recipe=sd15_character", "dataset.root=FILES/empty"], 2, ["FILES/empty nor in its folder(s) 3_kafka/"]),
    (["lint", "FILES/empty"], 2, ["FILES/empty has no images nor in 3_kafka/"]),
    (["rerun"], 2, ["the following arguments are required: RUN_DIR"]),
    (["keys", "netwrk"], 2, ["no key starts with 'netwrk'; did you mean network?"]),
]


@pytest.mark.parametrize("args,code,says", CASES, ids=[" ".join(c[0])[:60] for c in CASES])
def test_error_paths_are_one_message(files, args, code, says):
    p = run(*[a.replace("FILES", str(files)) for a in args], cwd=files)
    out = clean(p)
    assert p.returncode == code, out
    for s in says:
        assert s.replace("FILES", str(files)) in out, out


@pytest.mark.parametrize("args", [["--version"], ["plan", "--help"], ["+recipe=sd15_character", "network.dimm=8", "--cfg", "job"],
                                  ["trian"], ["import", "/nonexistent.toml"]])
def test_the_leads_standing_check(tmp_path, args):
    clean(run(*args, cwd=tmp_path))


def test_help_on_every_command_exits_0(capsys):
    from lorafw.cli import COMMANDS, main

    for name in COMMANDS:
        assert main([name, "--help"]) == 0, name
        out = capsys.readouterr().out
        assert f"lorafw {name}" in out or "lorafw +recipe=" in out, (name, out[:300])
        assert main(["help", name]) == 0 and capsys.readouterr().out == out
    assert main(["tags", "freq", "--help"]) == 0 and "usage: lorafw tags freq" in capsys.readouterr().out


def test_top_level_help_lists_every_command_and_group(tmp_path):
    p = run("--help", cwd=tmp_path)
    from lorafw.cli import COMMANDS

    assert p.returncode == 0 and all(f"lorafw {n} " in p.stdout for n in COMMANDS)
    assert "optimizer" in p.stdout and "adamw8bit" in p.stdout and "+recipe" in p.stdout and "lorafw keys" in p.stdout
    assert run(cwd=tmp_path).stdout == p.stdout  # a bare `lorafw` too
    assert run("plan", "--help", cwd=tmp_path).stdout.startswith("usage: lorafw plan")


def test_version_names_the_libraries_without_importing_torch():
    out = lorafw_main_without_torch("--version")
    lines = dict(ln.split(maxsplit=1) for ln in out.splitlines())
    assert lines["lorafw"].startswith("0.") and {"torch", "diffusers", "transformers", "peft", "lycoris-lora", "hydra-core"} <= set(lines)
    from importlib.metadata import version

    assert lines["torch"] == version("torch") and lines["hydra-core"] == version("hydra-core")


def test_keys_prints_the_schema():
    out = lorafw_main_without_torch("keys", "network")
    rows = out.splitlines()
    assert rows and all(r.startswith("network.") for r in rows)
    assert any(r.split()[:4] == ["network.dim", "16", "int", "≥"] and "(kohya: network_dim)" in r for r in rows)
    md = lorafw_main_without_torch("keys", "--markdown").splitlines()
    assert md[0].startswith("| key | default |") and any(r.startswith("| `optimizer.lr` |") for r in md)
    assert "dataset.duplicate_hardness" in lorafw_main_without_torch("keys", "dataset")


def test_cfg_job_still_shows_a_recipe_without_a_model_or_dataset(tmp_path):
    p = run("+recipe=pdxl", "--cfg", "job", cwd=tmp_path)
    assert p.returncode == 0 and "path: ???" in p.stdout and clean(p)


def test_a_bug_is_one_line_and_a_traceback_file(monkeypatch, capsys):
    from lorafw import cli
    from lorafw.cli import commands

    def broken(argv):
        raise RuntimeError("boom")

    monkeypatch.delenv("LORAFW_TRACEBACK", raising=False)
    monkeypatch.setattr(commands, "cmd_recipes", broken)
    assert cli.main(["recipes"]) == 1
    err = capsys.readouterr().err
    assert "internal error (a bug in lorafw, not in your input): RuntimeError: boom" in err and "Traceback" not in err
    crash = Path(err.split("the traceback is in ")[1].split(";")[0])
    assert "RuntimeError: boom" in crash.read_text() and "Traceback" in crash.read_text()
    crash.unlink()
    monkeypatch.setenv("LORAFW_TRACEBACK", "1")
    with pytest.raises(RuntimeError):
        cli.main(["recipes"])
