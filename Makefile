# lfvila: two commands do everything on a fresh machine (see README.md).
#   make demo   create .venv if missing, install, run the main job on its embedded default
#   make test   the same environment, the whole CPU test suite (tests/, benchmark harness, gpu_check smoke)

VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.lfvila-installed
PYTEST := $(PY) -m pytest
# Triton kernels run on a CPU only under the interpreter, which must be set before they are defined.
CPU_ENV := $(shell $(PY) -c "import torch,sys; sys.stdout.write('' if torch.cuda.is_available() else 'TRITON_INTERPRET=1')" 2>/dev/null || echo TRITON_INTERPRET=1)

.PHONY: demo test lint format bench ext venv clean

$(STAMP): requirements.txt setup.py
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	LFVILA_SKIP_CUDA_BUILD=1 $(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(CPU_ENV) $(PY) -m lfvila demo

test: $(STAMP)
	$(CPU_ENV) $(PYTEST) tests -q
	$(CPU_ENV) $(PYTEST) benchmarks -q -m "not gpu" --benchmark-disable

lint: $(STAMP)
	$(PY) -m ruff check lfvila kernels tests benchmarks setup.py
	$(PY) -m ruff format --check lfvila kernels tests benchmarks setup.py

format: $(STAMP)
	$(PY) -m ruff format lfvila kernels tests benchmarks setup.py
	$(PY) -m ruff check --fix lfvila kernels tests benchmarks setup.py

# CPU benchmarks with timing (pytest-benchmark); the GPU report is benchmarks/gpu_check.sh.
bench: $(STAMP)
	$(CPU_ENV) $(PYTEST) benchmarks -m "not gpu" --benchmark-columns=median,iqr,rounds --benchmark-sort=name

# Build the optional CUDA extension lfvila._C (needs nvcc and csrc/ kernels).
ext: $(STAMP)
	LFVILA_FORCE_CUDA_BUILD=1 $(PY) -m pip install --no-deps --no-build-isolation -e .

clean:
	rm -rf build *.egg-info .pytest_cache .benchmarks .ruff_cache
