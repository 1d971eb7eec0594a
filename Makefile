# Trainboard: `make run` starts everything, `make test` checks everything.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint typecheck pytest frontend-test frontend-build frontend-check bench clean

run: $(STAMP)
	$(BIN)/trainboard serve --host $(HOST) --port $(PORT)

# The CPU build of torch is pinned first so a plain install does not pull a CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0 || $(BIN)/pip install --quiet torch
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: lint typecheck frontend-test pytest

lint: $(STAMP)
	$(BIN)/ruff check backend tests bench
	$(BIN)/ruff format --check backend tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest

frontend/node_modules/.installed: frontend/package.json frontend/package-lock.json
	cd frontend && npm ci --no-audit --no-fund
	touch $@

frontend-test: frontend/node_modules/.installed
	cd frontend && npm test
	$(MAKE) frontend-check

frontend-build: frontend/node_modules/.installed
	cd frontend && npm run build

# The committed build must be what the source builds to.
frontend-check: frontend/node_modules/.installed
	cd frontend && npm run build -- --outDir ../build/dist-check --emptyOutDir
	diff -r frontend/dist build/dist-check

bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	for script in store emit overhead fanout train_demo data targets create_checks; do $(BIN)/python bench/$$script.py || exit 1; done

clean:
	rm -rf $(VENV) build frontend/node_modules .pytest_cache .mypy_cache .ruff_cache
