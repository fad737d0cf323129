# uploadsvc: the operator contract. `make serve` and `make test` are all a new user needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA_DIR ?= var
BIND ?= 127.0.0.1:8080

.PHONY: install js serve test lint typecheck torture bench clean

install: $(STAMP) js

# Reinstall only when the project's dependencies change.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,postgres,s3,client]'
	touch $(STAMP)

# The page's Node project (package.json at the top: tus-js-client, pinned by its lock file, and
# playwright-core): the upload page's browser code and the live suite's JavaScript clients
# (tests/js, web/page_test.mjs). When node and npm are installed (without them those tests
# skip and the page says it can't be built), `npm ci` runs when the lock file changes, then
# tus-js-client's bundle is copied into uploadsvc/static/ (generated, not in git).
JS_STAMP := node_modules/.installed
WEB_ASSET := uploadsvc/static/tus.min.js
HAVE_NPM := $(shell command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 && echo yes)

ifeq ($(HAVE_NPM),yes)
BENCH_JS := bench/tus-node/node_modules/.installed
js: $(WEB_ASSET)
else
js:
	@echo "node/npm not found: skipping node_modules (the JavaScript tests skip, the page can't be built)"
endif

$(JS_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $(JS_STAMP)

$(WEB_ASSET): $(JS_STAMP)
	cp node_modules/tus-js-client/dist/tus.min.js $(WEB_ASSET)

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
# (loopback only, about 25 minutes with the capacity workload's 60 s holds; not part of
# `make test`). BENCH_ARGS="--quick" for a 6-minute look, "--big" adds a 10 GiB upload; the
# table lands in bench-results/latest.json.
bench: $(STAMP) $(BENCH_JS)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# The @tus/server peer: a Node project of its own (bench/tus-node), so the test suite's
# node_modules stays as it is; without node/npm the bench skips that column with a note.
TUS_NODE_STAMP := bench/tus-node/node_modules/.installed
$(TUS_NODE_STAMP): bench/tus-node/package.json bench/tus-node/package-lock.json
	cd bench/tus-node && npm ci --no-audit --no-fund --loglevel=error
	touch $(TUS_NODE_STAMP)

clean:
	rm -rf $(VENV) *.egg-info build .mypy_cache .ruff_cache .pytest_cache .import_linter_cache \
		node_modules bench/tus-node/node_modules $(WEB_ASSET)
