# The two commands a new user runs (README): `make demo` and `make test`.
# Each sets up its own virtual environment from requirements.txt first.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint format bench clean down

$(STAMP): requirements.txt
	@test -n "$(PYTHON)" || { echo "error: Python 3.11 not found; install it or pass PYTHON=/path/to/python3.11"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	@touch $(STAMP)

setup: $(STAMP) ## create .venv and install the pinned requirements

demo: $(STAMP) ## the main job on the embedded default
	$(PY) -m workload demo $(ARGS)

test: $(STAMP) ## every test, against real embedded servers
	$(PY) -m pytest $(ARGS)

lint: $(STAMP) ## ruff lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The benchmark scripts, in the order docs/benchmarks.md presents them (bench/_common.py and
# bench/dbworkload_allocation.py are modules the scripts use, not benchmarks).
BENCHMARKS ?= seed_speed rebalance_trade cdc_relay allocate_strategies allocate_scaling anchors locust_overhead soak

bench: $(STAMP) ## benchmark-only packages, then each of $(BENCHMARKS) (about an hour; BENCHMARKS=anchors runs one)
	$(PY) -m pip install --quiet -r requirements-bench.txt
	for name in $(BENCHMARKS); do echo "== bench/$$name.py"; $(PY) bench/$$name.py $(ARGS) || exit 1; done

down: $(STAMP) ## stop the embedded stack of the default run directory
	$(PY) -m workload down

clean: down
	rm -rf .lab $(VENV)
