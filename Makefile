# tollway: one entry point for people and CI. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
CONFIG ?= examples/quickstart.toml
# Stamps: re-install only when the dependency list changes.
DEPS_STAMP := $(VENV)/.deps-stamp

.DEFAULT_GOAL := help
.PHONY: help venv build build-dev run test test-rust test-python lint fmt bench bench-native fuzz loadtest clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(DEPS_STAMP): pyproject.toml | $(PY)
	$(PIP) install --quiet "maturin>=1.9,<2"
	$(PY) -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
		deps = p["dependencies"] + [d for extra in ("test", "bench", "dev", "otel") for d in p["optional-dependencies"][extra]]; \
		print("\n".join(deps))' > $(VENV)/requirements.txt
	$(PIP) install --quiet -r $(VENV)/requirements.txt
	touch $@

venv: $(DEPS_STAMP) ## create the virtualenv with every dependency

build: $(DEPS_STAMP) ## build the native extension (release) into the virtualenv
	VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/maturin develop --release --quiet

build-dev: $(DEPS_STAMP) ## build the native extension (debug, fast to compile)
	VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/maturin develop --quiet

run: build ## install, build and serve the quickstart on 127.0.0.1:8080
	$(VENV)/bin/tollway serve --config $(CONFIG)

test: build test-rust test-python ## install, build and run every test

test-rust: ## cargo test for the native core and the upstream transport
	cargo test -p tollway-core -p tollway-net --quiet

test-python: ## pytest (starts real gateway and mock upstream processes)
	$(PY) -m pytest -q

lint: $(DEPS_STAMP) ## ruff, mypy, cargo fmt and clippy
	$(VENV)/bin/ruff check python tests benches loadtests
	$(VENV)/bin/ruff format --check python tests benches loadtests
	$(VENV)/bin/mypy
	cargo fmt --all --check
	cargo clippy --all-targets -- -D warnings

fmt: $(DEPS_STAMP) ## format Python and Rust
	$(VENV)/bin/ruff format python tests benches loadtests
	$(VENV)/bin/ruff check --fix python tests benches loadtests
	cargo fmt --all

# The last run is the accounting's and the policies' cost end to end (issues 4 and 5):
# interleaved, the gateways on one CPU and the load on the others when there are two or more.
bench: build ## benchmarks: native vs Python, upstream client, request path in process, end-to-end overhead (needs wrk)
	$(PY) -m pytest benches -q -p no:cacheprovider --benchmark-only --benchmark-columns=mean,stddev,ops
	$(PY) benches/upstream_client.py
	$(PY) benches/request_path.py --rounds 4
	@command -v wrk >/dev/null || { echo "installing wrk for the end-to-end benchmark"; apt-get install -y -qq wrk || sudo apt-get install -y -qq wrk; }
	$(PY) benches/e2e_overhead.py
	$(PY) benches/e2e_overhead.py --rounds 8 --instances 2 --duration 3 \
		--variants bare,no-access-log,default,bare-policies $(if $(filter-out 1,$(shell nproc)),--pin)

bench-native: ## criterion benchmarks of the native kernels
	cargo bench -p tollway-core

FUZZ_SECONDS ?= 60
fuzz: ## fuzz the SSE parser for FUZZ_SECONDS (installs cargo-fuzz; uses nightly if present)
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	cd rust/core && if rustup toolchain list 2>/dev/null | grep -q nightly; then \
		cargo +nightly fuzz run sse_chunking -- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=1024; \
	else \
		RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none sse_chunking -- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=1024; \
	fi

loadtest: build ## locust scenarios (chat, stream, policies) against a mock upstream, held to latency budgets (loadtests/README.md)
	$(PY) loadtests/run.py

clean: ## remove build outputs and the virtualenv
	rm -rf $(VENV) target .pytest_cache
	find python -name '*.so' -delete
