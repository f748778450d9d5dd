# Two commands do all the set-up on a fresh machine with only Python 3.11+:
#   make run    install into .venv, start embedded PostgreSQL + Redis, migrate, serve API + worker + scheduler
#   make test   the same set-up, then ruff, mypy (strict) and the whole pytest suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck pytest bench openapi lock clean chromium

# The runtime dependencies are installed at the versions deploy/requirements.lock pins (the image's),
# so the tests run what the image ships; the lock's hashes are checked by the image build.
$(STAMP): pyproject.toml deploy/requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	grep -E '^[A-Za-z0-9]' deploy/requirements.lock | sed 's/ *\\$$//' > $(VENV)/constraints.txt
	$(BIN)/python -m pip install --quiet -c $(VENV)/constraints.txt -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/notifier dev

test: $(STAMP) chromium lint typecheck pytest

# The console's browser tests drive the OS's Chromium (never a downloaded one). Install Debian's
# package when it is missing and we can (root with apt-get); otherwise those tests skip, saying why.
chromium:
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian's chromium for the browser tests"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; } || \
		echo "could not install chromium: the browser tests will skip"; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check notifier tests benchmarks
	$(BIN)/ruff format --check notifier tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python -m benchmarks.fanout

openapi: $(STAMP)
	$(BIN)/notifier openapi > schemas/openapi.json

# The image's dependency lock: the versions in .venv (what the tests run with), hashed.
lock: $(STAMP)
	$(BIN)/pip freeze --exclude-editable | sed -E 's/^([A-Za-z0-9_.-]+) @ .*/\1/' > .venv/tested.txt
	$(BIN)/python -m pip install --quiet pip-tools
	$(BIN)/pip-compile --quiet --generate-hashes --strip-extras --no-header --allow-unsafe \
	  --no-emit-index-url --no-emit-find-links --annotation-style=line -c .venv/tested.txt \
	  -o .venv/requirements.lock pyproject.toml
	{ printf '%s\n' '# The exact dependencies the test suite runs with (runtime only), every wheel hashed: the' \
	  '# Dockerfile installs them with --require-hashes. Regenerate with `make lock` after changing' \
	  '# pyproject.toml dependencies (pip-compile, constrained to the versions in .venv).'; \
	  cat .venv/requirements.lock; } > deploy/requirements.lock

clean:
	rm -rf $(VENV) .notifier .mypy_cache .ruff_cache .pytest_cache
