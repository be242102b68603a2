# Every install step lives here: a fresh clone needs only `make serve` or `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEV    := $(VENV)/.installed-dev

.PHONY: serve test lint typecheck check bench clean system-deps

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

$(DEV): $(STAMP) pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

serve: $(STAMP)
	$(BIN)/triochat serve $(ARGS)

# tmux is used by the terminal check of the TUI, openssl (s_client) by the TLS tests,
# redis-server (with redis-cli) by the Redis tests (tests/redisd.py), chromium by the test
# that opens `harness --html`'s page in a headless browser; each installed
# when missing and we may.
system-deps:
	@command -v tmux >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && (apt-get update -qq && apt-get install -y -qq tmux >/dev/null) || true; }
	@command -v openssl >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && (apt-get update -qq && apt-get install -y -qq openssl >/dev/null) || true; }
	@command -v redis-server >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && (apt-get update -qq && apt-get install -y -qq redis-server >/dev/null) || true; }
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || true; }

# The suite mostly waits (servers, timeouts, subprocesses): 4 workers on 2 cores were the
# fastest measured (2: 45-49 s, 3: 34-36 s, 4: 28-31 s, 6: 29-33 s). TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 4

test: $(DEV) system-deps
	$(BIN)/pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

lint: $(DEV)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(DEV)
	$(BIN)/mypy

check: lint typecheck test

bench: $(DEV)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
