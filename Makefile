# Set-up and entry points. `make demo` and `make test` each install what they need first
# (Debian packages with apt-get, then a virtual environment with pip) on a fresh machine.

VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := python3-venv libsndfile1 espeak-ng flite festival festvox-kallpc16k festvox-us-slt-hts fortunes
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
STAMP := $(VENV)/.installed
# NeMo itself, only for `make test-nemo` (imported models compared with NeMo); torch is pinned to
# the project's version, which also keeps pip from pulling a second, CUDA-sized torch
NEMO_VENV ?= .venv-nemo
NEMO_STAMP := $(NEMO_VENV)/.installed

.PHONY: setup demo test test-nemo lint typecheck

$(STAMP): pyproject.toml
	$(SUDO) apt-get update
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y $(APT_PACKAGES)
	python3 -m venv $(VENV)
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e '.[dev]'
	touch $@

setup: $(STAMP)

demo: setup
	$(VENV)/bin/conformer-prune demo

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

typecheck: setup
	$(VENV)/bin/mypy

test: lint typecheck
	$(VENV)/bin/pytest

$(NEMO_STAMP):
	python3 -m venv $(NEMO_VENV)
	$(NEMO_VENV)/bin/python -m pip install torch==2.13.0 'nemo_toolkit[asr]==3.0.0'
	touch $@

test-nemo: setup $(NEMO_STAMP)
	NEMO_PYTHON=$(abspath $(NEMO_VENV))/bin/python $(VENV)/bin/pytest -m nemo
