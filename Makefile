# Two commands for a fresh machine: `make demo` (install + the main job) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Busy-waiting OpenMP threads made torch ~15x slower on small shared CPUs; users can override.
export OMP_WAIT_POLICY ?= PASSIVE
DEMO_DIR ?= demo-run

.PHONY: install demo test lint bench clean test-integrations

install: $(STAMP)

$(STAMP): pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# Wheels only for every dependency (nothing compiles); lvisctl itself is pure Python.
	$(BIN)/python -m pip install -q --only-binary=:all: -e '.[test]'
	# lvis-api 0.5.3 is the reference the evaluator is tested against; its pinned deps (opencv, Cython)
	# are not needed for evaluation, so it is installed alone.
	$(BIN)/python -m pip install -q --no-deps lvis==0.5.3
	touch $(STAMP)

demo: install
	$(BIN)/lvisctl demo --run-dir $(DEMO_DIR)

test: install
	$(BIN)/python -m pytest -q

# The optional mmdet extra and its tests. mmcv publishes no wheel for this torch: point LVISCTL_WHEELS at a
# folder holding one (CI: LVISCTL_WHEELS=../shared/wheels); wheels only, so nothing compiles for 30 minutes.
LVISCTL_WHEELS ?=
test-integrations: install
	$(BIN)/python -m pip install -q --only-binary=:all: $(if $(LVISCTL_WHEELS),--find-links $(LVISCTL_WHEELS)) -e '.[mmdet]'
	$(BIN)/python -m pytest -q tests/integration/test_mmdet_integration.py tests/unit/test_integrations_detectron2.py

lint: install
	$(BIN)/ruff check lvisctl tests benchmarks
	$(BIN)/ruff format --check lvisctl tests benchmarks

bench: install
	$(BIN)/python benchmarks/eval_speed.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
