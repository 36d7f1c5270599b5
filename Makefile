# events-first: developer entry points (GNU make). Everything runs from the project venv.
# Ports/paths of the local stack come from the environment (see infra/README.md):
#   RUN_DIR=.run KAFKA_PORT=9092 KAFKA_CONTROLLER_PORT=9093 PG_PORT=5432 PG_USE_EMBEDDED=0 ...
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.deps-installed
PYTEST_ARGS ?=
TEST_PATHS := $(wildcard tests e2e-tests)

.PHONY: help venv kafka-jars chromium screenshots up down ps logs lint test unit e2e bench-kernel bench-codecs bench-personal bench-tracing bench-clients bench bench-quick demo watch dlq dlq-replay audit chaos contract asyncapi-spec

help: ## list the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-13s %s\n", $$1, $$2}'

venv: $(STAMP) ## create .venv (python3.11) and install the project + dev deps (re-run when pyproject.toml changes)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

kafka-jars: venv ## fetch the Kafka broker jars with Maven (once; cached)
	$(PY) -m infra kafka-jars

# apt-get needs root: as root directly, otherwise through sudo (non-interactive: it fails, never prompts).
AS_ROOT := $(if $(filter 0,$(shell id -u)),,sudo -n)

chromium: ## Debian's Chromium for the browser tests (apt-get as root, only when /usr/bin/chromium is missing)
	@test -x /usr/bin/chromium || { $(AS_ROOT) apt-get update -qq && $(AS_ROOT) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

up: venv kafka-jars ## start Kafka + PostgreSQL (+ services) in the background
	$(PY) -m infra up

down: venv ## stop exactly what `make up` started, by PID
	$(PY) -m infra down

ps: venv ## list the processes of `make up`
	$(PY) -m infra ps

logs: venv ## print the logs (LOGS="kafka postgres" to choose, FOLLOW=1 to follow)
	$(PY) -m infra logs $(if $(FOLLOW),-f) $(LOGS)

LINTED  := shared services infra reliability bench docker tests e2e-tests
TYPED   := shared services infra reliability bench docker

lint: venv ## ruff (lint + format check) over the tree and mypy --strict over the product code
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)
	$(VENV)/bin/mypy --strict $(TYPED)

test: venv kafka-jars chromium lint ## lint and types, then unit + integration + end-to-end tests against real Kafka and PostgreSQL
	$(VENV)/bin/pytest $(TEST_PATHS) $(PYTEST_ARGS)

unit: venv ## unit tests only (no Kafka / PostgreSQL)
	$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

e2e: venv kafka-jars chromium ## end-to-end tests only (own stack; E2E_USE_MAKE_UP=1 or E2E_*_URL: see e2e-tests/conftest.py)
	$(VENV)/bin/pytest e2e-tests $(PYTEST_ARGS)

screenshots: venv kafka-jars chromium ## screenshots of the web UI's main pages into docs/ui/ (on a private stack)
	E2E_UI_SCREENSHOT_DIR=docs/ui $(VENV)/bin/pytest e2e-tests/ui/test_screenshots.py -q

bench-codecs: venv ## codec micro-benchmark that chose the contract's msgspec: msgspec vs pydantic vs dataclass+orjson
	$(PY) -m bench.codecs

bench-personal: venv ## crypto-shredding's CPU per order: seal at placement, open per read (bench/results/personal.json)
	$(PY) -m bench.personal

bench-tracing: venv ## CPU per message hop with tracing off, on, and on but sampled out (bench/results/tracing.json)
	$(PY) -m bench.tracing

bench-clients: venv kafka-jars ## aiokafka vs confluent-kafka, relay- and runner-shaped: CPU per message (bench/results/clients.json)
	$(PY) -m bench.clients

bench-kernel: venv ## micro-benchmark of the event-store kernel
	$(PY) -m bench.kernel

bench: venv kafka-jars ## whole-system benchmark on its own stack, with the DBOS peer: bench/results/latest.json + .png (< ~10 min)
	$(PY) -m bench.system

bench-quick: venv kafka-jars ## the same whole-system benchmark, shorter steps (< 2 min)
	$(PY) -m bench.system --quick

demo: venv ## guided tour against the running `make up` stack (ARGS="--fast --no-color")
	$(PY) e2e-tests/demo.py $(ARGS)

watch: venv ## print every event on the Kafka topics live (ARGS="--order ID --from-beginning")
	$(PY) -m infra watch $(ARGS)

dlq: venv ## list the dead letters of every DLQ topic (ARGS="--topic payment.commands --json")
	$(PY) -m infra dlq list $(ARGS)

dlq-replay: venv ## resubmit ONE dead letter to its topic after a fix (ARGS="--topic <dlq or source topic> --id <message id>")
	$(PY) -m infra dlq replay $(ARGS)

audit: venv ## check the saga invariants, topics vs event logs, views vs write side (ARGS="--json --settle-s 30")
	$(PY) -m reliability audit $(ARGS)

chaos: venv kafka-jars ## faults under load on a private stack; table + reliability/results/chaos-latest.json (ARGS="--faults kill-order,poison --rate 20")
	$(PY) -m reliability chaos $(ARGS)

contract: venv ## regenerate docs/schemas, docs/asyncapi.yaml and docs/EVENTS.md from shared/contract
	$(PY) -m shared.contract.publish

asyncapi-spec: venv ## fetch the official AsyncAPI 3.0.0 JSON Schema (npm @asyncapi/specs, pinned) into .cache/ (the tests do it lazily)
	$(PY) -m tests.unit.contract.asyncapi_spec
