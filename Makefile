# uploadsvc: the operator contract. `make serve` and `make test` are all a new user needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA_DIR ?= var
BIND ?= 127.0.0.1:8080

.PHONY: install js web serve test lint typecheck torture bench clean

install: $(STAMP) js web

# Reinstall only when the project's dependencies change.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,postgres,s3,client]'
	touch $(STAMP)

# The JavaScript clients of the live suite (tests/js: tus-js-client, playwright-core), when
# node and npm are installed (without them those tests skip); reinstalled only when the
# lock file changes.
JS_DIR := tests/js
JS_STAMP := $(JS_DIR)/node_modules/.installed
HAVE_NPM := $(shell command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 && echo yes)

ifeq ($(HAVE_NPM),yes)
js: $(JS_STAMP)
else
js:
	@echo "node/npm not found: skipping $(JS_DIR) (its live tests will be skipped)"
endif

$(JS_STAMP): $(JS_DIR)/package.json $(JS_DIR)/package-lock.json
	npm ci --prefix $(JS_DIR) --no-audit --no-fund --loglevel=error
	touch $(JS_STAMP)

# The upload page's browser code (web/: tus-js-client, pinned by its lock file, and
# playwright-core for tests/live/test_page.py): `npm ci` when the lock file changes, then
# tus-js-client's bundle is copied into uploadsvc/static/ (generated, not in git).
WEB_DIR := web
WEB_STAMP := $(WEB_DIR)/node_modules/.installed
WEB_ASSET := uploadsvc/static/tus.min.js

ifeq ($(HAVE_NPM),yes)
web: $(WEB_ASSET)
else
web:
	@echo "node/npm not found: the upload page can't be built (it says so when opened)"
endif

$(WEB_STAMP): $(WEB_DIR)/package.json $(WEB_DIR)/package-lock.json
	npm ci --prefix $(WEB_DIR) --no-audit --no-fund --loglevel=error
	touch $(WEB_STAMP)

$(WEB_ASSET): $(WEB_STAMP)
	cp $(WEB_DIR)/node_modules/tus-js-client/dist/tus.min.js $(WEB_ASSET)

# The upload page is on here (UPLOADSVC_WEB_UI=1); set UPLOADSVC_WEB_UI=0 to turn it off.
serve: install
	UPLOADSVC_DATA_DIR=$${UPLOADSVC_DATA_DIR:-$(DATA_DIR)} \
		UPLOADSVC_WEB_UI=$${UPLOADSVC_WEB_UI:-1} \
		$(BIN)/gunicorn -c gunicorn.conf.py -b $(BIND) wsgi:app

# lint-imports: the import layers and the framework-free core (pyproject.toml's
# [tool.importlinter] contracts say which and why).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest

# The fault and abuse campaigns against a real gunicorn (about 10 minutes; not part of
# `make test`, which runs their fast profile). TORTURE_ARGS="--seed N --only dropped"
# replays or narrows a run; the table lands in torture-results/latest.json.
torture: install
	$(BIN)/python -m torture $(TORTURE_ARGS)

# Throughput, latency and memory against this machine's limit and a plain Flask baseline
# (loopback only, about 10 minutes; not part of `make test`). BENCH_ARGS="--quick" for a
# 2-minute look, "--big" adds a 10 GiB upload; the table lands in bench-results/latest.json.
bench: $(STAMP)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) *.egg-info build .mypy_cache .ruff_cache .pytest_cache .import_linter_cache \
		$(JS_DIR)/node_modules $(WEB_DIR)/node_modules $(WEB_ASSET)
