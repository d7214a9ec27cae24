# latentlm: the two set-up commands are `make train` and `make test`; both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel that lies on these machines' disk; a plain `torch` would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed-stamp
ARGS ?=
JOBS ?=

.PHONY: install train test lint results sweep paper zoo bench-data bench-train bench-decode bench-tp-decode wheelhouse clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# Generates the default stories and tokenizer when absent, then trains the default model (CPU or GPU).
train: $(STAMP)
	$(PY) -m latentlm.train $(ARGS)

# One pytest worker a core (pytest-xdist), each with one torch thread: most tests are short runs that wait on
# process start-up and imports, so two workers on two cores take 3.4 minutes where one took 6.
test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n auto $(ARGS)

# GPU-only tests (CUDA graphs, bf16, the Triton decode kernel); `make test` skips them where CUDA is absent. Needs no
# venv: on a GPU node, after the wheelhouse's install line, it runs `python3 -m pytest -q -m gpu` (pytest is in the
# node's image). With the venv: make test-gpu PYTHON=.venv/bin/python
test-gpu:
	$(PYTHON) -m pytest -q -m gpu $(ARGS)

# docs/results.md, and each experiment's tables and plots, from the run summaries in docs/results/*/runs/.
results: $(STAMP)
	$(PY) -m latentlm.report docs/results --out docs/results.md

# An experiment's table on a GPU: trains `experiment=$(EXPERIMENT)` as one sweep, keeps each trained run's summary
# in docs/results/$(EXPERIMENT)/runs/ (a committed run of the same name is replaced, the others are kept, so a sweep
# of some variants, ARGS="attention=gqa,mqa", adds to the table), then `make results`. `make paper` is the MLA
# small-LM paper's table (paper_mla, 42 runs); `make zoo` every attention variant. JOBS=k runs k jobs at once
# (hydra/launcher=gpus, spread over the GPUs): on one H200, 15 jobs of the 30m model at once trained 15 runs in
# 4.7 min, where one at a time takes about 46 s a run (docs/benchmarks.md).
# SWEEP is fixed once (":="), so the sweep and the copy that follows name the same folder.
ifndef SWEEP
SWEEP := $(shell date +%Y-%m-%d_%H-%M-%S)
endif
export SWEEP
EXPERIMENT ?= paper_mla
sweep: $(STAMP)
	$(PY) -m latentlm.train -m experiment=$(EXPERIMENT) sweep_id=$(SWEEP) \
	  $(if $(JOBS),hydra/launcher=gpus hydra.launcher.n_jobs=$(JOBS)) $(ARGS)
	mkdir -p docs/results/$(EXPERIMENT)/runs
	for run in logs/$(EXPERIMENT)/multiruns/$(SWEEP)/*/; do \
	  grep -q '"status": "skipped"' $$run/summary.json || cp $$run/summary.json docs/results/$(EXPERIMENT)/runs/$$(basename $$run).json; \
	done
	$(MAKE) results

paper:
	$(MAKE) sweep EXPERIMENT=paper_mla

zoo:
	$(MAKE) sweep EXPERIMENT=zoo

# Benchmarks print a table and write JSON (and plots) into logs/bench/<name>/<time>/; ARGS="--out docs/" replaces
# the committed results. bench-train and bench-decode are meant for a GPU and pick CPU-sized defaults on a CPU.
bench-data: $(STAMP)
	$(PY) scripts/bench_data.py $(ARGS)

bench-train: $(STAMP)
	$(PY) scripts/bench_train.py $(ARGS)

bench-decode: $(STAMP)
	$(PY) scripts/bench_decode.py $(ARGS)

# Tensor-parallel decode over this host's GPUs (one process a GPU; a 2-process gloo smoke on a CPU), one JSON a TP
# degree; ARGS="--nproc 1 --out docs/tp_decode/30m" then "--nproc 2 ..." and scripts/tp_decode_table.py on the folder.
bench-tp-decode: $(STAMP)
	$(PY) scripts/bench_tp_decode.py $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check latentlm scripts tests

clean:
	rm -rf $(VENV) data logs outputs wandb

# Wheels for the GPU node (CPython 3.12): only what its image lacks (hydra, datasets, wandb and their missing deps).
wheelhouse:
	PYTHON=$(PYTHON) bash scripts/wheelhouse.sh
