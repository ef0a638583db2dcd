"""notebooks/lorafw_colab.ipynb runs headless, top to bottom, on the tiny model on the CPU (LORAFW_NOTEBOOK_TEST=1
swaps Drive and the user's model for a temporary folder, the tiny model and a generated dataset), so the
notebook cannot rot as the Python API changes."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "lorafw_colab.ipynb"


def _read():
    nbformat = pytest.importorskip("nbformat")
    return nbformat.read(str(NOTEBOOK), as_version=4)


def test_notebook_has_the_colab_steps_and_a_settings_form():
    nb = _read()
    titles = [re.search(r"#@title (.*?)(\{|$)", c.source, re.M) for c in nb.cells if c.cell_type == "code"]
    titles = [t.group(1).strip() for t in titles if t]
    assert titles[0] == "Settings"
    for step in ("Install", "Drive", "Doctor", "Dataset check", "Train", "Grid", "Download"):
        assert any(step in t for t in titles), (step, titles)
    form = nb.cells[1].source
    for key in ("BASE_MODEL", "RECIPE", "EPOCHS", "NETWORK_DIM", "LEARNING_RATE", "PRECISION", "FULL_FP16"):
        assert re.search(rf"^{key} = .*#@param", form, re.M), key


@pytest.mark.slow
def test_notebook_runs_headless_on_the_tiny_model(tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    nb = _read()
    monkeypatch.setenv("LORAFW_NOTEBOOK_TEST", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend: plots become outputs
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(NOTEBOOK.parents[1]), os.environ.get("PYTHONPATH", "")]))
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                        if o.get("output_type") == "stream")
    assert "lint:" in outputs and "steps" in outputs  # lint and plan ran
    assert "precision (train.mixed_precision=auto)" in outputs  # doctor ran
    assert "2 LoRA file(s) in" in outputs and "my_lora-02.safetensors" in outputs
    assert re.search(r"grid.*\.png", outputs) and "-loras.zip" in outputs
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 2  # the loss plot and the grid
