# lorafw — the two commands in the README:
#   make demo   trains a LoRA on a built-in tiny model and synthetic dataset (about a minute on 2 CPU cores)
#   make test   runs the test suite
# Each sets up .venv itself: `demo` installs what running lorafw needs, `test` adds the [test] extra, `docs` the
# [docs] extra. One stamp file per layer, so `make demo` then `make test` still installs the test extra.
# torch is installed first so pip does not pull a build you did not ask for; pick another with e.g.
# `make demo TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"`.
#   make docs   regenerates the reference pages (tools/gen_docs.py) and builds the site into site/
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
RUNTIME := $(VENV)/.installed-runtime
TESTDEPS := $(VENV)/.installed-test
DOCSDEPS := $(VENV)/.installed-docs

.PHONY: demo test docs venv clean

venv: $(RUNTIME)

$(RUNTIME): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e .
	touch $@

$(TESTDEPS): $(RUNTIME)
	$(PY) -m pip install -q -e ".[test]"
	touch $@

$(DOCSDEPS): $(RUNTIME)
	$(PY) -m pip install -q -e ".[docs]"
	touch $@

demo: $(RUNTIME)
	$(VENV)/bin/lorafw demo

test: $(TESTDEPS)
	$(PY) -m pytest -q

docs: $(DOCSDEPS)
	$(PY) tools/gen_docs.py
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

clean:
	rm -rf $(VENV) lorafw-demo outputs multirun site .pytest_cache .mypy_cache .ruff_cache
