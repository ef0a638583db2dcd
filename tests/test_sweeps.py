"""Sweeps beyond the basic launcher: jobs in parallel (joblib), on a cluster (SLURM config) and an
Optuna search whose objective is the run's validation loss."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import tiny_overrides
from test_cli import lorafw


def test_joblib_runs_a_sweeps_jobs_in_parallel(tmp_path, tiny_model, tiny_dataset):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "sweep"
    p = lorafw("-m", "launcher=joblib", "hydra.launcher.n_jobs=2", "+recipe=sd15_character",
               *tiny_overrides(tiny_model, tiny_dataset, sweep), "network.dim=4,8", cwd=tmp_path)
    runs = sorted(d for d in sweep.iterdir() if d.is_dir())
    assert [d.name for d in runs] == ["0_network.dim=4", "1_network.dim=8"], p.stdout + p.stderr
    for d, dim in zip(runs, (4, 8)):
        assert json.loads((d / "run.json").read_text())["status"] == "finished"
        meta = json.loads((d / "run_summary.json").read_text())
        assert meta["files"] == ["toy-01.safetensors"]
        from safetensors import safe_open

        with safe_open(d / "toy-01.safetensors", "pt") as f:
            assert f.metadata()["ss_network_dim"] == str(dim)
    assert yaml.safe_load((sweep / "multirun.yaml").read_text())["hydra"]["launcher"]["n_jobs"] == 2


def test_optuna_search_minimises_the_validation_loss(tmp_path, tiny_model, tiny_dataset):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "search"
    p = lorafw("-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2", "+recipe=sd15_character",
               *tiny_overrides(tiny_model, tiny_dataset, sweep), "validation.split=0.25", cwd=tmp_path)
    runs = sorted(d for d in sweep.iterdir() if d.is_dir())
    assert len(runs) == 2, p.stdout + p.stderr
    vals = {}
    for d in runs:
        s = json.loads((d / "run_summary.json").read_text())
        vals[d.name] = min(e["val_loss"] for e in s["epochs"] if e["val_loss"] is not None)
        assert "optimizer.lr=" in d.name and "network.dim=" in d.name and "network.alpha=" in d.name
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert result["best_value"] == pytest.approx(min(vals.values()))  # the objective is the validation loss
    best = min(vals, key=vals.get)
    assert f"network.dim={result['best_params']['network.dim']}" in best
    assert "lowest validation loss: epoch 1" in p.stdout


def test_a_search_needs_multirun(tmp_path):
    p = lorafw("hparams_search=optuna", "+recipe=sd15_character", cwd=tmp_path, check=False)
    assert p.returncode == 2 and "add -m" in p.stderr
    assert not (tmp_path / "outputs").exists()


def test_slurm_launcher_resolves_to_one_gpu_per_job(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    out = lorafw("launcher=slurm", "hydra.launcher.partition=gpu", "+recipe=pdxl", "--cfg", "hydra", cwd=tmp_path).stdout
    launcher = yaml.safe_load(out)["hydra"]["launcher"] if out.lstrip().startswith("hydra:") else yaml.safe_load(out)["launcher"]
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert launcher["gpus_per_node"] == 1 and launcher["tasks_per_node"] == 1 and launcher["partition"] == "gpu"
    assert launcher["submitit_folder"].endswith(".submitit/%j")


def test_a_missing_launcher_plugin_names_the_package():
    from hydra.errors import MissingConfigException

    from lorafw.config.problems import explain_compose_error

    # Hydra's own exception, as it raises it when the plugin's config group is absent (its fields, not its text)
    hydra_raises = MissingConfigException("any wording", "hydra/launcher/joblib", ["basic"])
    assert "pip install hydra-joblib-launcher" in explain_compose_error(hydra_raises, [])
    hydra_raises = MissingConfigException("any wording", "optimizer/adamw9", ["adamw", "adamw8bit"])
    assert "did you mean optimizer=adamw?" in explain_compose_error(hydra_raises, [])
