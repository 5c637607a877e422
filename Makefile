# The same commands everywhere: a laptop, .ci/run and the GitHub workflows.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LOCK = $(BIN)/uv pip compile pyproject.toml --universal --python-version 3.11 --generate-hashes --quiet
PYTEST_ARGS ?=

.PHONY: install install-dev install-ui install-spark lock proto run ui test test-unit test-slow lint audit bench stress image stack clean help

help:  ## List the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

install: $(VENV)/.run  ## Create .venv with what running needs: training and serving (idempotent)

install-dev: $(VENV)/.dev  ## Add the test, lint and benchmark tools to .venv (idempotent)

install-ui: $(VENV)/.ui  ## Add the MLflow UI and tracking server to .venv (idempotent)

install-spark: $(VENV)/.spark  ## Add pyspark to .venv, for `mnistops predict --engine spark` (idempotent)

# Each set is installed from its lock (hash-pinned, resolved from PyPI alone), then the
# project itself without dependencies: what is installed is exactly what was locked.
$(VENV)/.%: requirements/%.txt pyproject.toml
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if (3, 11) <= v <= (3, 13) else f"mnistops needs Python 3.11, 3.12 or 3.13; {sys.executable} is {v[0]}.{v[1]} (make ... PYTHON=python3.12)")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24.3,<27"
	$(BIN)/python -m pip install --quiet --require-hashes -r $<
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $@

lock:  ## Re-resolve requirements/*.txt from pyproject.toml (PyPI, Python 3.11-3.13, Linux and macOS)
	@test -x $(BIN)/uv || $(MAKE) install-dev
	$(LOCK) --extra serve -o requirements/serve.txt
	$(LOCK) --extra serve --extra registry -o requirements/serve-registry.txt
	$(LOCK) --extra train -o requirements/run.txt
	$(LOCK) --extra train --extra ui -o requirements/ui.txt
	$(LOCK) --extra train --extra spark -o requirements/spark.txt
	$(LOCK) --extra dev -o requirements/dev.txt

PROTOCOL := src/mnistops/serve/protocol
proto: install-dev  ## Recompile the Open Inference Protocol's gRPC descriptor set from its proto
	cd $(PROTOCOL) && ../../../../$(BIN)/python -m grpc_tools.protoc -I. \
		--descriptor_set_out=open_inference_grpc.binpb open_inference_grpc.proto

run: install  ## Fetch MNIST, train a champion if there is none, serve it
	$(BIN)/mnistops run

test: install-dev  ## Unit, integration and e2e tests (not the slow ones)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-unit: install-dev  ## The unit tests only: in process, no training, network or system tools
	$(BIN)/python -m pytest -m unit $(PYTEST_ARGS)

test-slow: install-dev  ## The full lab recipe and other long tests
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

lint: install-dev  ## ruff, mypy, bandit, actionlint and pip-audit
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/bandit --quiet -c pyproject.toml -r src
	@if [ -d .github/workflows ]; then $(BIN)/actionlint .github/workflows/*.yml; fi
	$(MAKE) --no-print-directory audit

# Asks PyPI's JSON API about each pinned version; --strict: a package it cannot ask about
# fails the audit instead of passing unaudited.
audit: install-dev  ## Known vulnerabilities in every locked dependency (pip-audit, needs PyPI)
	$(BIN)/pip-audit --strict --disable-pip --require-hashes --progress-spinner off \
		$(addprefix -r ,$(wildcard requirements/*.txt))

bench: install-dev  ## Side-by-side benchmarks; writes bench/results.md
	$(BIN)/python -m bench.run

FUZZ_TESTS = tests/unit/serve/test_fuzz.py tests/integration/test_serve_fuzz.py tests/integration/test_oip.py
stress: install-dev  ## Long load, attack and fault runs; writes docs/reliability.md and bench/stress.md
	MNISTOPS_FUZZ_CASES=1000 $(BIN)/python -m pytest -k "never or generated" $(FUZZ_TESTS)
	$(BIN)/python -m bench.attack
	$(BIN)/python -m bench.run --stress

image: install  ## Build mnistops:latest serving the current champion (docker or podman)
	bash deploy/build-image.sh

stack:  ## Bring up the full stack (api, MLflow on PostgreSQL, Prometheus, Alertmanager, Grafana)
	bash deploy/stack.sh up

ui: install-ui  ## The MLflow UI on the state folder's tracking store
	$(BIN)/mnistops ui

clean:  ## Remove the venv and caches (keeps the state folder)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
