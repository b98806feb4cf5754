# Fresh machine: `make demo` (main job, embedded, no Kafka) and `make test` (full suite, starts its own broker).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install system-deps demo test test-unit lint bench clean

$(STAMP): pyproject.toml
	@$(PY) -c 'import sys; assert sys.version_info[:2] in ((3, 11), (3, 12)), "driftrag needs Python 3.11 or 3.12"'
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip
	$(BIN)/python -m pip install -e '.[dev]'
	@touch $@

install: $(STAMP)

# Debian packages the full suite needs besides Python: the broker's (Java 17, Maven), the dashboard test's browser
# (chromium) and the alert rules' checker and the scrape test's server (prometheus: promtool and prometheus).
# Installs only what is missing; apt-get runs through sudo when not root.
SYSTEM_DEPS := java:openjdk-17-jre-headless mvn:maven chromium:chromium promtool:prometheus prometheus:prometheus
system-deps:
	@missing=""; for d in $(SYSTEM_DEPS); do command -v $${d%%:*} >/dev/null || missing="$$missing $${d#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  echo "installing Debian packages:$$missing"; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

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
