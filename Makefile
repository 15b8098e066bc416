# Two commands matter: `make demo` and `make test`. Both start with `setup`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
# Test processes: the tests mostly wait on brokers and worker processes, so two keep CI's two
# cores busy; each file stays in one process (its module fixtures are built once).
PYTEST_WORKERS ?= 2

.PHONY: setup setup-prometheus test demo lint format typecheck clean

setup: $(STAMP)

# The stamp makes setup a no-op until pyproject.toml changes. torch goes in first and pinned:
# pip then takes the local CPU wheel instead of resolving a CUDA build from the index.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,bench,local]'
	touch $@

# Prometheus + promtool (Debian package `prometheus`) for tests/test_observability.py and
# deploy/. Best effort: without root or apt-get those tests skip and say why. The package's own
# service is stopped and disabled: Prometheus runs on demand, on deploy/prometheus.yml.
setup-prometheus:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || { \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q prometheus && \
		{ systemctl disable --now prometheus || service prometheus stop; } >/dev/null 2>&1; \
		command -v promtool >/dev/null; \
	} || echo "setup-prometheus: not installed (needs root + apt-get); observability tests skip"

# A private broker on a free loopback port lives for the whole suite; pytest's exit code wins.
test: setup setup-prometheus
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/glintstream broker --port 0 --run-dir .run/test-broker -- \
		$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# Every demo starts clean: the embedded broker keeps nothing across restarts, so neither do we.
DEMO_DIR := .run/demo
demo: setup
	rm -rf $(DEMO_DIR)
	GLINTSTREAM_STATE_DIR=$(DEMO_DIR)/state GLINTSTREAM_REGISTRY_DIR=$(DEMO_DIR)/registry \
		$(BIN)/honcho start -f Procfile

lint: setup
	$(BIN)/ruff check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: setup
	$(BIN)/mypy

clean:
	rm -rf .run build dist *.egg-info .pytest_cache .hypothesis .ruff_cache .mypy_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +
