# Set-up and entry points. `make demo` and `make test` each install what they need first
# (Debian packages with apt-get, then a virtual environment with pip) on a fresh machine.

VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := python3-venv libsndfile1 espeak-ng flite festival festvox-kallpc16k festvox-us-slt-hts fortunes \
	festvox-kdlpc16k fortune-anarchism \
	build-essential cmake libboost-program-options-dev libboost-system-dev libboost-thread-dev \
	libboost-test-dev zlib1g-dev libbz2-dev liblzma-dev
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
STAMP := $(VENV)/.installed
# NeMo itself, only for `make test-nemo` (imported models compared with NeMo); torch is pinned to
# the project's version, which also keeps pip from pulling a second, CUDA-sized torch
NEMO_VENV ?= .venv-nemo
NEMO_STAMP := $(NEMO_VENV)/.installed

# KenLM's lmplz and build_binary (n-gram LM estimation) are not on PyPI as programs: they are built
# from the kenlm source distribution on PyPI into the environment's bin/ (Boost and zlib from apt)
KENLM_VERSION := 0.3.0
LMPLZ := $(VENV)/bin/lmplz

.PHONY: setup demo test test-nemo lint typecheck lmplz

$(STAMP): pyproject.toml Makefile
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

$(LMPLZ): $(STAMP)
	rm -rf build/kenlm && mkdir -p build/kenlm
	$(PY) -m pip download --no-deps --no-binary kenlm kenlm==$(KENLM_VERSION) -d build/kenlm
	tar -xzf build/kenlm/kenlm-$(KENLM_VERSION).tar.gz -C build/kenlm
	cmake -S build/kenlm/kenlm-$(KENLM_VERSION) -B build/kenlm/build -DCMAKE_BUILD_TYPE=Release
	$(MAKE) -C build/kenlm/build -j2 lmplz build_binary
	cp build/kenlm/build/bin/lmplz build/kenlm/build/bin/build_binary $(VENV)/bin/

lmplz: $(LMPLZ)

# the suite in one worker per core (pytest-xdist): much of it is single-threaded tracing (ONNX
# export). On 2 cores (AMD EPYC) 2 workers took 430-590 s in four runs (the host's load varies);
# one took 775 s, with 7 more exports then
test: lint typecheck $(LMPLZ)
	$(VENV)/bin/pytest -n auto

$(NEMO_STAMP):
	python3 -m venv $(NEMO_VENV)
	$(NEMO_VENV)/bin/python -m pip install torch==2.13.0 'nemo_toolkit[asr]==3.0.0'
	touch $@

test-nemo: setup $(NEMO_STAMP)
	NEMO_PYTHON=$(abspath $(NEMO_VENV))/bin/python $(VENV)/bin/pytest -m nemo
