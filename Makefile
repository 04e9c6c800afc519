# lfvila: two commands do everything on a fresh machine (see README.md).
#   make demo   create .venv if missing, install, run the main job on its embedded default
#   make test   the same environment, the whole CPU test suite (tests/, benchmark harness, gpu_check smoke)

VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.lfvila-installed
PYTEST := $(PY) -m pytest
# The GPU image's Triton, beside the pinned one, for the compile report only (tests/kernels/
# compile_for_gpu.py compiles every kernel variant under both; PYTHONPATH=$(TRITON_GPU) selects it).
TRITON_GPU := $(VENV)/triton-3.6
# Without a GPU, Triton kernels run only in its interpreter: the CLI and the conftest files turn
# TRITON_INTERPRET=1 on by themselves before any kernel is defined.

.PHONY: demo test lint format bench ext venv clean

$(STAMP): requirements.txt requirements-nodeps.txt setup.py
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -r requirements-nodeps.txt
	LFVILA_SKIP_CUDA_BUILD=1 $(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

$(TRITON_GPU)/.installed: $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --upgrade --target $(TRITON_GPU) triton==3.6.0
	@touch $@

venv: $(STAMP) $(TRITON_GPU)/.installed

demo: $(STAMP)
	$(PY) -m lfvila demo

test: $(STAMP) $(TRITON_GPU)/.installed
	$(PYTEST) tests -q
	$(PYTEST) benchmarks -q -m "not gpu" --benchmark-disable

lint: $(STAMP)
	$(PY) -m ruff check lfvila kernels tests benchmarks setup.py
	$(PY) -m ruff format --check lfvila kernels tests benchmarks setup.py

format: $(STAMP)
	$(PY) -m ruff format lfvila kernels tests benchmarks setup.py
	$(PY) -m ruff check --fix lfvila kernels tests benchmarks setup.py

# CPU benchmarks with timing (pytest-benchmark); the GPU report is benchmarks/gpu_check.sh.
bench: $(STAMP)
	$(PYTEST) benchmarks -m "not gpu" --benchmark-columns=median,iqr,rounds --benchmark-sort=name

# Build the optional CUDA extension lfvila._C (needs nvcc and csrc/ kernels).
ext: $(STAMP)
	LFVILA_FORCE_CUDA_BUILD=1 $(PY) -m pip install --no-deps --no-build-isolation -e .

clean:
	rm -rf build *.egg-info .pytest_cache .benchmarks .ruff_cache
