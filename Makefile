# The two commands of the quick start: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# Pinned dependencies with hashes: requirements.lock (what the image runs) and
# requirements-dev.lock (the same pins plus the test tools). `make lock` re-resolves both.
LOCK     := requirements.lock
DEV_LOCK := requirements-dev.lock
LOCK_VENV  ?= .venv-lock
UV_VERSION ?= 0.13.9
UPGRADE    ?= --upgrade
COMPILE = $(LOCK_VENV)/bin/uv pip compile pyproject.toml --universal --python-version 3.11 \
	--generate-hashes --custom-compile-command "make lock" --quiet $(UPGRADE)

.PHONY: run test lint format bench clean lock

# The locked dependencies first (every file checked against its hash), then the project itself.
$(STAMP): pyproject.toml $(LOCK) $(DEV_LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r $(DEV_LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

## lock: re-resolve both lock files to the newest versions pyproject.toml allows
##       (UPGRADE= keeps the current pins and only adds what pyproject.toml now asks for)
lock:
	test -x $(LOCK_VENV)/bin/uv || ($(PYTHON) -m venv $(LOCK_VENV) \
		&& $(LOCK_VENV)/bin/python -m pip install --quiet 'uv==$(UV_VERSION)')
	$(COMPILE) -o $(LOCK)
	$(COMPILE) --extra dev -c $(LOCK) -o $(DEV_LOCK)

## run: start the bot (console chat on the simulated upstream when nothing is configured)
run: $(STAMP)
	$(BIN)/creditbot run

## test: lint, format check, the import contracts (pyproject.toml), then the whole test suite
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## bench: the benchmarks in bench/ (figures go to docs/performance.md)
bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) $(LOCK_VENV) .pytest_cache .ruff_cache
