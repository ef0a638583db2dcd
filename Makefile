# lorafw — the two commands in the README:
#   make demo   trains a LoRA on a built-in tiny model and synthetic dataset (about a minute on 2 CPU cores)
#   make test   runs the test suite
# Each sets up .venv itself. torch is installed first so pip does not pull a build you did not ask for;
# pick another with e.g. `make demo TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"`.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python

.PHONY: demo test venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[test]"
	touch $@

demo: venv
	$(VENV)/bin/lorafw demo

test: venv
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) lorafw-demo outputs multirun .pytest_cache .mypy_cache .ruff_cache
