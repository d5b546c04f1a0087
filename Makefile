# Entry points for a fresh clone on a CPU machine:
#   make demo   - create .venv, install medxai, run the demo job
#   make test   - create .venv, install medxai + test tools (Python and Debian), run the test suite
#   make lint   - ruff (lint + format check) and mypy (dicom_io/ and medxai's typed API); docs/development.md
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: demo test lint venv system-deps bench bench-ingest clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch is installed first and pinned so pip takes the CPU wheel instead of a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

venv: $(VENV)/.installed

system-deps:
	bash scripts/install_system_deps.sh

demo: venv
	$(BIN)/medxai demo -o demo_out

test: venv system-deps
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The import rules (tests/test_import_rules.py) run with the tests; the paths mypy checks are
# [tool.mypy] files in pyproject.toml.
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: venv
	$(BIN)/medxai bench -o bench_out --pretrained

bench-ingest: venv
	$(BIN)/python benchmarks/ingest.py

clean:
	rm -rf $(VENV) demo_out bench_out .pytest_cache .mypy_cache .ruff_cache
