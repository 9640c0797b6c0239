# The front door: every command the README shows is a target here.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
sources = pipeline tasks budget settings tests bench

.PHONY: install demo test test-all lint bench worker flower up down chaos clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/quotaflow demo

test: install
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: install
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check $(sources)
	$(BIN)/ruff format --check $(sources)
	$(BIN)/mypy

bench: install
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m bench.gate
	$(PY) -m bench.strategies

chaos: install
	$(PY) -m pytest -s -m slow tests/reliability tests/pipeline/test_jobs.py $(PYTEST_ARGS)

worker: install
	$(BIN)/celery -A pipeline worker -Q quotaflow,quotaflow.retry -c 8 -l info

# Flower reads FLOWER_BASIC_AUTH from its environment: the password stays off the
# command line (and out of `ps`).
flower: install
	@test -n "$$FLOWER_BASIC_AUTH" || { echo "set FLOWER_BASIC_AUTH=user:password" >&2; exit 2; }
	$(BIN)/celery -A pipeline flower

up:
	docker compose up -d

down:
	docker compose down

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
