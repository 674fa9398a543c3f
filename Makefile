# inception_jax: every target installs what it needs first, so each works alone on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL ?= 2
export TF_ENABLE_ONEDNN_OPTS ?= 0
# glibc malloc with transparent huge pages: CPU steps without a page fault per touched page (inception_jax/cpu/host_memory.py)
export GLIBC_TUNABLES ?= glibc.malloc.hugetlb=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184
export JAX_COMPILATION_CACHE_DIR ?= $(CURDIR)/.jax_cache
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS ?= 0.5
export JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES ?= 0
TEST_WORKERS ?= 2

.PHONY: install test test-all lint run parity bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m "not parity and not exhaustive" --ignore=tests/test_parity_timm.py tests

test-all: install  # make test plus the exhaustive cases (tests/marks.py)
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m "not parity" --ignore=tests/test_parity_timm.py tests

lint: install
	$(VENV)/bin/ruff check .

run: install
	$(PY) -m inception_jax.main --config=configs/ablation_scale.py

parity: install
	$(VENV)/bin/pip install -q -e '.[parity]'
	$(PY) -m pytest -q -m parity tests/test_parity_timm.py  # alone: torch must not load beside TF in one process

bench: install
	$(PY) benchmarks/model_compile.py

clean:
	rm -rf $(VENV) .jax_cache .pytest_cache
