# Two commands set everything up on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
# The interpreter .venv is made from, so the daemon's and the hook's: $(PYTHON) when
# given, else the distribution's CPython 3.11+ (/usr/bin/python3, when it can make a
# virtualenv), else `python3` on PATH (checked the same way; as it is when neither
# passes, so that its own error says what is missing). A distribution builds CPython
# with profile-guided and link-time optimisation, which a source build (pyenv's
# default) lacks: side by side here the daemon needed 20% less CPU per HTTP hook on
# Debian's 3.11 than on pyenv's. Always the real binary, not a symlink or a
# version-manager shim (a distribution upgrade that moves `python3` leaves .venv as it
# was). An existing .venv is kept: `rm -rf .venv` to make it again from another one.
PYTHON ?= $(shell for p in /usr/bin/python3 python3; do \
	$$p -I -c 'import os, sys, venv, ensurepip; sys.version_info >= (3, 11) or sys.exit(1); print(os.path.realpath(sys.executable))' 2>/dev/null && exit 0; \
	done; python3 -I -c 'import os, sys; print(os.path.realpath(sys.executable))')
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

# The real Claude Code the end-to-end tests (tests/e2e) run, installed with npm into a
# cache outside the repo; npm 11 skips its postinstall, so the tests run the native
# binary of the platform package directly.
CLAUDE_CODE_VERSION := 2.1.332
CLAUDE_CODE_CACHE ?= $(HOME)/.cache/contextuate-trio/claude-code
CLAUDE_CODE_ARCH := $(shell uname -m | sed 's/x86_64/x64/;s/aarch64/arm64/')
CONTEXTUATE_CLAUDE_BIN ?= $(CLAUDE_CODE_CACHE)/node_modules/@anthropic-ai/claude-code-linux-$(CLAUDE_CODE_ARCH)/claude
export CONTEXTUATE_CLAUDE_BIN

# System packages the tests use: a redis-server binary the tests start themselves,
# Debian's Chromium for the dashboard tests, faketime to jump the hook's clocks, tmux
# for Claude Code's interactive mode, iproute2 for the network-namespace hosts; then
# Claude Code itself (without npm, or when the install fails, the e2e tests skip and
# say why).
test-deps:
	@need=""; \
	command -v redis-server >/dev/null || need="$$need redis-server"; \
	command -v chromium >/dev/null || need="$$need chromium"; \
	command -v faketime >/dev/null || need="$$need faketime"; \
	command -v chromedriver >/dev/null || need="$$need chromium-driver"; \
	command -v tmux >/dev/null || need="$$need tmux"; \
	command -v ip >/dev/null || need="$$need iproute2"; \
	if [ -n "$$need" ]; then \
		echo "installing:$$need"; \
		(apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$need >/dev/null; \
	fi
	@if [ ! -x "$(CONTEXTUATE_CLAUDE_BIN)" ] || ! "$(CONTEXTUATE_CLAUDE_BIN)" --version 2>/dev/null | grep -qF "$(CLAUDE_CODE_VERSION)"; then \
		if command -v npm >/dev/null; then \
			echo "installing Claude Code $(CLAUDE_CODE_VERSION) into $(CLAUDE_CODE_CACHE)"; \
			npm install --prefix "$(CLAUDE_CODE_CACHE)" --no-audit --no-fund --loglevel=error \
				"@anthropic-ai/claude-code@$(CLAUDE_CODE_VERSION)" >/dev/null \
				|| echo "npm install of Claude Code failed: the e2e tests will skip"; \
		else \
			echo "no npm: the e2e tests (real Claude Code) will skip"; \
		fi; \
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

# BENCH_QUICK=1 make bench: smaller samples; the hook is timed on the interpreter .venv
# was made from (the one `hooks install` writes into the hook's command).
bench: $(BENCH_STAMP) test-deps
	$(VPY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache benchmarks/results
