# `make demo` and `make test` set everything up from scratch, then run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Portable llama.cpp build: the native default has crashed at first eval on some CPUs.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON

.PHONY: setup demo test test-loaded test-fast test-stress lint docs clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[local,server,dev,embed]'
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/loopsim --db demo.db demo --days 3 --report demo-report.md

# Says how long the suite took on this machine (the bound: 10 minutes on an idle one).
test: setup
	@start=$$(date +%s); status=0; $(BIN)/python -m pytest -q || status=$$?; \
	took=$$(( $$(date +%s) - start )); \
	echo "make test took $$((took / 60)) min $$((took % 60)) s on this machine"; \
	exit $$status

# The whole suite with every core kept busy by a spinning process, as on a shared
# machine: a test that passes only when the machine is idle fails here.
test-loaded: setup
	@pids=""; for i in $$(seq $$(nproc)); do yes > /dev/null & pids="$$pids $$!"; done; \
	trap 'kill $$pids 2>/dev/null' EXIT INT TERM; \
	start=$$(date +%s); status=0; $(BIN)/python -m pytest -q || status=$$?; \
	took=$$(( $$(date +%s) - start )); \
	echo "make test-loaded took $$((took / 60)) min $$((took % 60)) s with $$(nproc) busy cores"; \
	exit $$status

test-fast: setup
	$(BIN)/python -m pytest -q -m "not integration and not stress"

# The stress tier for 10 minutes: many real processes on one SQLite file.
test-stress: setup
	LOOPSIM_STRESS_SECONDS=600 $(BIN)/python -m pytest -q -m stress

lint: setup
	$(BIN)/ruff check loopsim tests migrations benchmarks
	$(BIN)/ruff format --check loopsim tests migrations benchmarks
	$(BIN)/mypy

docs: setup
	$(BIN)/python -m loopsim.cli.doc > docs/cli.md

clean:
	rm -rf $(VENV) demo.db demo.db-wal demo.db-shm demo-report.md
