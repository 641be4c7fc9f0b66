# Set-up is part of every target: `make test` / `make demo` on a fresh clone create .venv first.
# torch is installed before the package so pip never resolves a CUDA build on a CPU machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: venv test test-fast test-gpu demo lint slurm-up slurm-down bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	@touch $@

lint: venv
	$(VENV)/bin/ruff check megatron_grpo environment tools tests bench

# One torch thread per process: the multi-process tests share 2 cores in CI.
test: venv lint slurm-up
	OMP_NUM_THREADS=1 $(PY) -m pytest $(PYTEST_ARGS)

test-fast: venv
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-gpu: venv
	$(PY) -m pytest -m gpu $(PYTEST_ARGS)

demo: venv
	$(VENV)/bin/megatron-grpo demo

slurm-up:
	bash slurm/local/slurm_up.sh

slurm-down:
	bash slurm/local/slurm_down.sh

clean:
	rm -rf $(VENV) results .pytest_cache
