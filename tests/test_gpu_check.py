"""checks/gpu_check.py on a CPU: --dry-run prints the plan in a fraction of a second without torch, the
report's markdown, the missing-package listing, and a rehearsal of every measuring stage on the tiny models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "checks" / "gpu_check.py"


def _module():
    return load_script(SCRIPT)


def test_dry_run_prints_the_plan_without_torch():
    code = (f"import runpy, sys; sys.argv = [{str(SCRIPT)!r}, '--dry-run']\n"
            "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\nexcept SystemExit as e:\n    rc = e.code\n"
            "print('TORCH', 'torch' in sys.modules, rc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("TORCH False 0"), out[-800:]
    for part in ("smoke tests on CUDA", "lorafw sd15 768² b2: steps/s", "lorafw sdxl 1024² b2, checkpointing",
                 "lorafw sdxl 1024² b2, compiled", "pdxl recipe as shipped", "gpu_check.json"):
        assert part in out, part


def test_dry_run_options_shape_the_plan(capsys):
    gc = _module()
    assert gc.main(["--dry-run", "--archs", "sdxl", "--no-compile", "--no-smoke", "--budget", "300"]) == 0
    out = capsys.readouterr().out
    assert "budget 300 s" in out and "sd15" not in out and "compiled" not in out and "smoke" not in out


def test_missing_packages_are_listed_with_their_wheels(tmp_path, monkeypatch):
    gc = _module()
    monkeypatch.setattr(gc, "missing_packages", lambda: ["diffusers", "came-pytorch"])
    (tmp_path / "diffusers-0.42.1-py3-none-any.whl").write_bytes(b"")
    text = gc.describe(gc.Plan(), tmp_path)
    assert "diffusers," in text and "came-pytorch (NO WHEEL)" in text


def test_no_wheels_folder_is_a_clear_error(monkeypatch):
    gc = _module()
    monkeypatch.setattr(gc, "missing_packages", lambda: ["diffusers"])
    with pytest.raises(SystemExit, match="missing diffusers and no --wheels folder"):
        gc.install(None, Path("/nonexistent"))


def test_markdown_rows():
    gc = _module()
    report = {"date": "2026-11-29", "seconds": 400.0,
              "environment": {"device": "NVIDIA H100 80GB HBM3", "torch": "2.11.0", "precision": "bf16", "peak_tflops": 989.0},
              "smoke": {"rc": 0, "summary": "16 passed in 80.1s", "seconds": 81.0},
              "throughput": [{"config": "sdxl 1024² b2", "steps_per_s": 12.5, "mfu_pct": 46.1, "peak_gib": 20.1, "plan_gib": 21.0,
                              "plan_error_pct": 4.5, "bare_s_per_step": 0.078, "overhead_ratio": 1.02},
                             {"config": "sdxl 1024² b2, compiled", "skipped": "time budget (30 s left, ~110 s needed)"}],
              "pdxl": {"config": "pdxl recipe, 1024² b2", "peak_gib": 9.1, "peak_reserved_gib": 9.8, "plan_gib": 9.6,
                       "plan_on_card_gib": 10.9, "plan_error_pct": 5.5}}
    md = gc.markdown(report)
    assert "## GPU check — NVIDIA H100 80GB HBM3, torch 2.11.0 (2026-11-29)" in md
    assert "| sdxl 1024² b2 | 12.5 | 46.1% | 20.1 | 21.0 (+4%) | 0.078 | 1.02 |" in md
    assert "| sdxl 1024² b2, compiled | time budget (30 s left, ~110 s needed) |" in md
    assert "16 passed" in md and "pdxl recipe, 1024² b2 (as shipped): peak 9.1 GiB" in md


def test_the_kohya_stage_runs_only_with_an_sd_scripts_checkout(tmp_path, monkeypatch, capsys):
    gc = _module()
    monkeypatch.delenv("SD_SCRIPTS", raising=False)
    monkeypatch.setattr(gc, "ROOT", tmp_path / "repo")  # no sd-scripts/ in or beside it
    assert gc.main(["--dry-run", "--no-smoke", "--archs", "sd15"]) == 0
    assert "lorafw vs kohya sd-scripts: skipped, no sd-scripts checkout" in capsys.readouterr().out
    sd = tmp_path / "sd-scripts"
    sd.mkdir()
    (sd / "train_network.py").write_text("")
    assert gc.main(["--dry-run", "--no-smoke", "--archs", "sd15", "--sd-scripts", str(sd)]) == 0
    assert f"lorafw vs kohya sd-scripts at {sd} (benchmarks/vs_kohya.py" in capsys.readouterr().out
    monkeypatch.setenv("SD_SCRIPTS", str(sd))
    assert gc.find_sd_scripts(None) == sd and gc.find_sd_scripts(tmp_path) is None
    assert gc.main(["--dry-run", "--rehearse"]) == 0
    assert "skipped, not rehearsed" in capsys.readouterr().out


def test_the_kohya_stage_reports_vs_kohyas_error_and_its_table(tmp_path):
    gc = _module()
    sd = tmp_path / "sd-scripts"
    sd.mkdir()
    (sd / "train_network.py").write_text("")  # no requirements.txt: vs_kohya.py refuses it at once
    args = gc.argparse.Namespace(kohya_python=None)
    row = gc.run_vs_kohya(args, sd, tmp_path, 120)
    assert row["rc"] == 2 and "is not an sd-scripts checkout" in row["error"]
    report = {"date": "2026-11-29", "seconds": 1.0, "environment": {"device": "GPU", "torch": "2"},
              "vs_kohya": {"sd_scripts": str(sd), "notes": ["bf16 at clip_skip 1"], "rows": [
                  {"precision": "fp32", "clip_skip": 2, "kohya_s_per_step": 0.2, "lorafw_s_per_step": 0.18, "ratio_steady": 0.9,
                   "ratio_with_save": 0.95, "peak_rss_kohya": 7 * 2**30, "peak_rss_lorafw": 6 * 2**30}]}}
    md = gc.markdown(report)
    assert "| fp32 (clip_skip 2) | 0.200 | 0.180 | 0.90 | 0.95 | 7.00 / 6.00 |" in md and "- bf16 at clip_skip 1" in md
    assert "lorafw vs kohya sd-scripts: no checkout" in gc.markdown({**report, "vs_kohya": {"skipped": "no checkout"}})


def test_peak_table_prefers_the_longer_name():
    gc = _module()
    assert gc.peak_tflops("NVIDIA H100 PCIe", None) == 756.0
    assert gc.peak_tflops("NVIDIA H100 80GB HBM3", None) == 989.0
    assert gc.peak_tflops("Tesla T4", None) == 65.0 and gc.peak_tflops("Unknown", 100.0) == 100.0


@pytest.mark.slow
def test_rehearsal_runs_every_measuring_stage_on_the_cpu(tmp_path):
    """The throughput, overhead and pdxl stages' code on the tiny models (figures meaningless): what a GPU session
    runs cannot rot unseen."""
    results = tmp_path / "RESULTS.md"
    p = subprocess.run([sys.executable, str(SCRIPT), "--rehearse", "--out", str(tmp_path / "out"), "--results", str(results),
                        "--steps", "2", "--warmup", "1"], capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    rows = report["throughput"]
    assert [r["config"] for r in rows] == ["sd15 64² b2", "sd15 64² b2, checkpointing"]
    assert all(r["steps_per_s"] > 0 and r["overhead_ratio"] > 0 and r["plan_gib"] > 0 for r in rows), rows
    assert report["pdxl"]["steps"] == 2 and report["pdxl"]["peak_gib"] > 0
    assert "## GPU check — CPU (rehearsal)" in results.read_text()
