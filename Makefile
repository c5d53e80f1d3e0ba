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

bench: $(STAMP) ## every benchmark script in turn (long: tens of minutes; see docs/benchmarks.md)
	$(PY) -m pip install --quiet -r requirements-bench.txt
	for script in bench/*.py; do echo "== $$script"; $(PY) $$script $(ARGS) || exit 1; done

down: $(STAMP) ## stop the embedded stack of the default run directory
	$(PY) -m workload down

clean: down
	rm -rf .lab $(VENV)
