# Two commands do all set-up on a fresh machine:
#   make run   - install, then run the gateway on the embedded stack
#   make test  - install, then run the whole test suite
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PORT ?= 8000
DATA_DIR ?= .data

.PHONY: setup system-deps run test lint bench clean

setup: system-deps $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# redis-server comes from the OS package; MongoDB is served by SecantusDB (a PyPI
# dependency) and Milvus by Milvus Lite, so nothing else is needed from the OS.
system-deps:
	@command -v redis-server >/dev/null || { \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq redis-server; }

run: setup
	$(BIN)/threadgate up --port $(PORT) --data-dir $(DATA_DIR)

test: setup
	$(BIN)/ruff check serve_app deployments scripts tests
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check serve_app deployments scripts tests
	$(BIN)/ruff format --check serve_app deployments scripts tests

bench: setup
	$(BIN)/python scripts/bench_turns.py

clean:
	rm -rf $(VENV) $(DATA_DIR)
