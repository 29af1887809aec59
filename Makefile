# Two commands set everything up on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
# The real interpreter, not a version-manager shim (the hook's cost is measured on it).
PYTHON ?= $(shell python3 -c 'import sys; print(sys.executable)')
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint bench test-deps clean

$(STAMP): pyproject.toml
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/contextuate-trio start --foreground

# System packages the tests use: a redis-server binary the tests start themselves,
# Debian's Chromium for the dashboard tests, and faketime to jump the hook's clocks.
test-deps:
	@need=""; \
	command -v redis-server >/dev/null || need="$$need redis-server"; \
	command -v chromium >/dev/null || need="$$need chromium"; \
	command -v faketime >/dev/null || need="$$need faketime"; \
	command -v chromedriver >/dev/null || need="$$need chromium-driver"; \
	if [ -n "$$need" ]; then \
		echo "installing:$$need"; \
		(apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$need >/dev/null; \
	fi

# The architecture and the code's shape: lint (ruff), format, types (mypy: strict on
# core/), and the import contracts (layers, a stdlib-only hook, a sans-IO core).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: lint test-deps
	$(VPY) -m pytest -q

BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(VPY) -m pip install -q -e '.[test,bench]'
	touch $(BENCH_STAMP)

# BENCH_QUICK=1 make bench: smaller samples; the hook is timed on $(PYTHON), the real
# interpreter behind `python3`.
bench: $(BENCH_STAMP) test-deps
	BENCH_PYTHON=$(PYTHON) $(VPY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache benchmarks/results
