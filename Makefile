# `make demo` and `make test` set everything up from scratch, then run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Portable llama.cpp build: the native default has crashed at first eval on some CPUs.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
# Some CI images set PYTHONDONTWRITEBYTECODE: then no loopsim module ever gets its .pyc, and
# every process the tests start compiles loopsim again (about 0.05 s of CPU for `run list`).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: setup demo test test-loaded durations test-fast test-stress lint docs clean FORCE
FORCE:

# editable_mode=strict links each file of the package into build/ and puts that folder on
# the path: no import hook runs each time Python starts, where a Ctrl-C in the first
# tenth of a second would end in "Fatal Python error" and a traceback. Edits show at once;
# a file added or removed relinks at the next `make` (the list is kept in .venv/.files).
PIP_FLAGS ?=
FILES := $(sort $(wildcard loopsim/*.* loopsim/*/*.* migrations/*.* migrations/versions/*.py))

$(VENV)/.files: FORCE
	@mkdir -p $(VENV)
	@echo '$(FILES)' | cmp -s - $@ || echo '$(FILES)' > $@

$(BIN)/.installed: pyproject.toml $(VENV)/.files
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(PIP_FLAGS) --config-settings editable_mode=strict \
		-e '.[local,server,dev,embed,uvloop]'
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/loopsim --db demo.db demo --days 3 --report demo-report.md

# The test files are spread over one pytest-xdist worker per core (a file stays on one
# worker, so its module fixtures start once): most tests spend their time waiting on
# processes they started. The longest files go first (tests/slowest_first.py), so no core
# idles while the other finishes a long file picked up last. TEST_JOBS=0 runs everything
# in this one process.
TEST_JOBS ?= auto
PYTEST := $(BIN)/python -m pytest -q -n $(TEST_JOBS) --dist loadfile --no-loadscope-reorder

# Says how long the suite took on this machine (the bound: 10 minutes on an idle one).
test: setup
	@start=$$(date +%s); status=0; $(PYTEST) --durations=15 || status=$$?; \
	took=$$(( $$(date +%s) - start )); \
	echo "make test took $$((took / 60)) min $$((took % 60)) s on this machine"; \
	exit $$status

# The whole suite with every core kept busy by a spinning process, as on a shared
# machine: a test that passes only when the machine is idle fails here.
test-loaded: setup
	@pids=""; for i in $$(seq $$(nproc)); do yes > /dev/null & pids="$$pids $$!"; done; \
	trap 'kill $$pids 2>/dev/null' EXIT INT TERM; \
	start=$$(date +%s); status=0; $(PYTEST) --durations=15 || status=$$?; \
	took=$$(( $$(date +%s) - start )); \
	echo "make test-loaded took $$((took / 60)) min $$((took % 60)) s with $$(nproc) busy cores"; \
	exit $$status

# Measures each test file again, for the order above (commit tests/durations.json).
durations: setup
	$(PYTEST) --record-durations

test-fast: setup
	$(PYTEST) -m "not integration and not stress"

# The stress tier for 10 minutes: many real processes on one SQLite file.
test-stress: setup
	LOOPSIM_STRESS_SECONDS=600 $(BIN)/python -m pytest -q -m stress

lint: setup
	$(BIN)/ruff check loopsim tests migrations benchmarks examples
	$(BIN)/ruff format --check loopsim tests migrations benchmarks examples
	$(BIN)/mypy

docs: setup
	$(BIN)/python -m loopsim.cli.doc > docs/cli.md

clean:
	rm -rf $(VENV) build/__editable__.* demo.db demo.db-wal demo.db-shm demo-report.md
