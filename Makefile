# flowwatch — the two commands are `make demo` and `make test`; everything else is a step of theirs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The venv is rebuilt whenever the lock or pyproject changes.
VENV_STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml 2>/dev/null | sha1sum | cut -c1-12)
export PYTHONPATH := $(CURDIR)
# Stack ports; the services' URLs follow them unless set explicitly.
export KAFKA_PORT ?= 9092
export REDIS_PORT ?= 6379
export MQTT_PORT ?= 1883
export PG_PORT ?= 5432
export FLOWWATCH_BROKER_URL ?= kafka://127.0.0.1:$(KAFKA_PORT)
export FLOWWATCH_REDIS_URL ?= redis://127.0.0.1:$(REDIS_PORT)/0
export FLOWWATCH_MQTT_URL ?= mqtt://127.0.0.1:$(MQTT_PORT)
export FLOWWATCH_HISTORY_DATABASE_URL ?= postgresql://postgres@127.0.0.1:$(PG_PORT)/flowwatch
export PYTHONDONTWRITEBYTECODE := 1
# The console's front end: npm ci again when the lock changes, a build when a source changes.
WEB := services/console/web
WEB_DEPS := $(WEB)/node_modules/.installed-$(shell sha1sum $(WEB)/package-lock.json 2>/dev/null | cut -c1-12)
WEB_SRC := $(shell find $(WEB)/src -type f 2>/dev/null) $(addprefix $(WEB)/,index.html package.json tsconfig.json vite.config.ts eslint.config.js)
WEB_BUILT := $(WEB)/dist/.built

.PHONY: help venv console-web console-web-test browser helm stack-up stack-down stack-status topics migrate test test-unit test-integration lint bench demo clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

venv: $(VENV_STAMP) ## create .venv and install the pinned packages

$(VENV_STAMP): requirements.lock pyproject.toml
	@echo "==> installing Python packages into $(VENV) (first run takes a minute or two)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	@$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	@rm -f $(VENV)/.installed-* && touch $@

console-web: $(WEB_BUILT) ## install (npm ci), lint and build the console's front end (cached)

$(WEB_DEPS): $(WEB)/package-lock.json
	@echo "==> npm ci in $(WEB)"
	@cd $(WEB) && npm ci --no-audit --no-fund --loglevel=error
	@rm -f $(WEB)/node_modules/.installed-* && touch $@

$(WEB_BUILT): $(WEB_DEPS) $(WEB_SRC)
	@echo "==> lint and build the console's front end"
	@cd $(WEB) && npm run --silent lint && npm run --silent build -- --logLevel warn
	@touch $@

console-web-test: $(WEB_DEPS) ## the front end's unit tests (vitest)
	@cd $(WEB) && npx vitest run

browser: ## Debian's chromium for the browser tests (apt-get install when missing)
	@bash scripts/browser.sh >/dev/null

stack-up: ## start Kafka (KRaft), Redis, Mosquitto and PostgreSQL on 127.0.0.1 (idempotent)
	@bash scripts/stack.sh up

stack-down: ## stop the local stack; leaves no process behind
	@bash scripts/stack.sh down

stack-status: ## show what of the local stack is running
	@bash scripts/stack.sh status

topics: venv stack-up ## create every registered topic (idempotent)
	@$(PY) -m shared.topics create

migrate: venv stack-up ## apply the history store's schema migrations (idempotent)
	@$(PY) -m services.history migrate

lint: venv ## ruff check and format check
	@$(PY) -m ruff check .
	@$(PY) -m ruff format --check .

helm: ## build the helm CLI from its Go module into the download cache (once, ~3 min cold)
	@bash scripts/helm.sh >/dev/null

test: venv stack-up lint helm console-web console-web-test browser ## run every test (unit and integration) against the real local stack
	@$(PY) -m pytest -p no:cacheprovider --durations=15

test-unit: venv ## unit tests only (no stack needed)
	@$(PY) -m pytest -p no:cacheprovider -m unit

test-integration: venv stack-up ## integration tests only
	@$(PY) -m pytest -p no:cacheprovider -m integration

bench: venv stack-up migrate console-web browser ## run the benchmarks; results as JSON in bench/results/
	@mkdir -p bench/results
	@set -e; for b in bench/bench_*.py; do echo "==> $$b"; $(PY) $$b; done
	@echo "results: $$(ls bench/results/*.json)"

demo: venv stack-up migrate console-web ## run the whole system on the local stack; Ctrl-C stops it
	@$(PY) -m scripts.demo

clean: stack-down ## stop the stack and remove local state (keeps the download cache)
	rm -rf .stack .flowwatch bench/results
