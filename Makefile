# Two commands for a fresh machine: `make demo` (install + the main job) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Busy-waiting OpenMP threads made torch ~15x slower on small shared CPUs; users can override.
export OMP_WAIT_POLICY ?= PASSIVE
DEMO_DIR ?= demo-run
# The exact versions CI tests (pyproject.toml declares the ranges lvisctl accepts).
CONSTRAINTS ?= constraints/tested.txt

.PHONY: install demo test test-fast lint bench clean test-integrations test-min gpu-wheels check-gpu-wheels

install: $(STAMP)

$(STAMP): pyproject.toml setup.py constraints/tested.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# Wheels only for every dependency (nothing compiles); lvisctl itself is pure Python.
	$(BIN)/python -m pip install -q --only-binary=:all: -c $(CONSTRAINTS) -e '.[test]'
	# lvis-api 0.5.3 is the reference the evaluator is tested against; its pinned deps (opencv, Cython)
	# are not needed for evaluation, so it is installed alone.
	$(BIN)/python -m pip install -q --no-deps lvis==0.5.3
	# Compile the evaluator's numba kernels now, not in the first `lvisctl evaluate` (seconds to minutes).
	$(BIN)/python -m lvisctl.evaluation.warmup
	touch $(STAMP)

demo: install
	$(BIN)/lvisctl demo --run-dir $(DEMO_DIR)

test: install
	$(BIN)/python -m pytest -q

# The inner loop: every test not marked slow (tests/conftest.py marks tests/integration, tests/e2e and the
# measured-slow unit tests by rule); under 90 s on 2 CPU cores. `make test` stays the whole suite (CI).
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

# The lowest versions pyproject.toml allows (constraints/min.txt: torch 2.11, torchvision 0.26), in a venv of
# their own so that .venv keeps the tested versions. Downloads a second torch (~0.5 GB, plus its CUDA libraries).
VENV_MIN := .venv-min
test-min:
	test -x $(VENV_MIN)/bin/python || $(PYTHON) -m venv $(VENV_MIN)
	$(VENV_MIN)/bin/python -m pip install -q --only-binary=:all: -c constraints/min.txt -e '.[test]'
	$(VENV_MIN)/bin/python -m pip install -q --no-deps lvis==0.5.3
	$(VENV_MIN)/bin/python -m pytest -q $(PYTEST_ARGS)

# The optional mmdet extra and its tests. mmcv publishes no wheel for this torch: point LVISCTL_WHEELS at a
# folder holding one (CI: LVISCTL_WHEELS=../shared/wheels); wheels only, so nothing compiles for 30 minutes.
LVISCTL_WHEELS ?=
test-integrations: install
	$(BIN)/python -m pip install -q --only-binary=:all: -c $(CONSTRAINTS) $(if $(LVISCTL_WHEELS),--find-links $(LVISCTL_WHEELS)) -e '.[mmdet]'
	$(BIN)/python -m pytest -q tests/integration/test_mmdet_integration.py tests/unit/test_integrations_detectron2.py \
		tests/integration/test_mmdet_seesaw.py

# A folder of wheels for a GPU machine without a package registry that already has torch, torchvision, timm,
# numpy, typer and rich (and so pillow, pyyaml, filelock, packaging, jinja2): what benchmarks/gpu_check.sh
# imports besides those (checked by check-gpu-wheels), at the tested versions, for GPU_PYTHON_VERSION on
# x86-64 Linux; `benchmarks/gpu_check.sh --wheels DIR` installs them there without the network. ~36 MB for
# python 3.12. numba is left out (llvmlite alone is 60 MB): `evaluate` then screens results files in Python,
# which the check's tiny files do not notice; GPU_WHEELS_EXTRA="numba llvmlite" adds it (~64 MB more).
GPU_WHEELS_DIR ?= gpu-wheels
GPU_PYTHON_VERSION ?= 3.12
GPU_WHEELS := pycocotools hotcoco pyyaml filelock packaging markupsafe \
	matplotlib contourpy cycler fonttools kiwisolver pyparsing python-dateutil tzdata \
	tensorboard tensorboard-data-server grpcio protobuf absl-py markdown werkzeug
GPU_WHEELS_EXTRA ?=
gpu-wheels:
	rm -rf $(GPU_WHEELS_DIR).tmp && mkdir -p $(GPU_WHEELS_DIR).tmp
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: -c $(CONSTRAINTS) -d $(GPU_WHEELS_DIR).tmp \
		--python-version $(GPU_PYTHON_VERSION) --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		$(GPU_WHEELS) $(GPU_WHEELS_EXTRA)
	rm -rf $(GPU_WHEELS_DIR) && mv $(GPU_WHEELS_DIR).tmp $(GPU_WHEELS_DIR)
	du -sh $(GPU_WHEELS_DIR)

# gpu_check.sh --cpu --wheels from a fresh venv holding only what the GPU machine has (GPU_MACHINE_PACKAGES, by
# default at the tested versions; e.g. GPU_MACHINE_PACKAGES="torch==2.11.0 torchvision==0.26.0 timm numpy typer
# rich" CHECK_CONSTRAINTS=constraints/min.txt for that machine's pair) plus a gpu-wheels folder for this python.
CHECK_VENV := .venv-gpu-check
GPU_MACHINE_PACKAGES ?= torch torchvision timm numpy typer rich
CHECK_CONSTRAINTS ?= $(CONSTRAINTS)
check-gpu-wheels:
	$(MAKE) gpu-wheels GPU_WHEELS_DIR=$(CHECK_VENV)-wheels GPU_PYTHON_VERSION=$$($(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
	rm -rf $(CHECK_VENV) && $(PYTHON) -m venv $(CHECK_VENV)
	$(CHECK_VENV)/bin/python -m pip install -q --only-binary=:all: -c $(CHECK_CONSTRAINTS) $(GPU_MACHINE_PACKAGES)
	PYTHON=$(CHECK_VENV)/bin/python benchmarks/gpu_check.sh --cpu --wheels $(CHECK_VENV)-wheels

lint: install
	$(BIN)/ruff check lvisctl tests benchmarks
	$(BIN)/ruff format --check lvisctl tests benchmarks

bench: install
	$(BIN)/python benchmarks/eval_speed.py

clean:
	rm -rf $(VENV) $(VENV_MIN) $(CHECK_VENV) $(CHECK_VENV)-wheels $(DEMO_DIR) .pytest_cache
