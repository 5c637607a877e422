# The same commands everywhere: a laptop, .ci/run and the GitHub workflows.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install run test test-slow lint bench stress image stack clean help

help:  ## List the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

install: $(STAMP)  ## Create .venv and install mnistops with all extras (idempotent)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24.3,<27"
	$(BIN)/python -m pip install --quiet -e ".[dev]" -c constraints.txt
	@touch $(STAMP)

run: install  ## Fetch MNIST, train a champion if there is none, serve it
	$(BIN)/mnistops run

test: install  ## Unit, integration and e2e tests (not the slow ones)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: install  ## The full lab recipe and other long tests
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

lint: install  ## ruff, mypy and actionlint
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	@if [ -d .github/workflows ]; then $(BIN)/actionlint .github/workflows/*.yml; fi

bench: install  ## Side-by-side benchmarks; writes bench/results.md
	$(BIN)/python -m bench.run

stress: install  ## Long load and fault runs
	$(BIN)/python -m bench.run --stress

image: install  ## Build mnistops:latest serving the current champion (docker or podman)
	bash deploy/build-image.sh

stack:  ## Bring up the full stack (api, MLflow on PostgreSQL, Prometheus, Alertmanager, Grafana)
	bash deploy/stack.sh up

clean:  ## Remove the venv and caches (keeps the state folder)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
