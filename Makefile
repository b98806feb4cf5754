# Fresh machine: `make demo` (main job, embedded, no Kafka) and `make test` (full suite, starts its own broker).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-unit lint bench clean

$(STAMP): pyproject.toml
	@$(PY) -c 'import sys; assert sys.version_info[:2] in ((3, 11), (3, 12)), "driftrag needs Python 3.11 or 3.12"'
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip
	$(BIN)/python -m pip install -e '.[dev]'
	@touch $@

install: $(STAMP)

demo: install
	$(BIN)/driftrag run --embedded --max-events 50000 --rate 10000 --progress-every 2

test: install
	$(BIN)/python -m pytest

test-unit: install
	$(BIN)/python -m pytest -m 'not kafka'

lint: install
	$(BIN)/ruff check streams operators index tests bench

bench: install
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
