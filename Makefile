# SafeWatch developer entry points. Every target works on a fresh Debian 12
# machine (as root, for the services): see README.md.
#
#   make demo      simulator + edge gateway + cloud API on this machine
#   make test      lint, types, layer contracts, then the whole pytest suite
#   make lint      ruff, ruff format --check, mypy, lint-imports
#   make services  Mosquitto, InfluxDB and PostgreSQL answering on 127.0.0.1
#   make browser   Debian's Chromium for the wall page's browser test
#   make clean     remove caches and demo state (keeps .venv)

VENV := .venv
SITE ?= firmware_configs/sites/demo-mine.yaml
BIN := $(VENV)/bin

.PHONY: demo test lint services browser venv clean

venv:
	scripts/venv.sh

services:
	scripts/services.sh --postgres

browser:
	scripts/browser.sh

demo: venv
	scripts/services.sh
	$(BIN)/safewatch demo --site $(SITE)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint services browser
	scripts/test.sh

clean:
	rm -rf var/demo .pytest_cache .mypy_cache .ruff_cache .hypothesis .import_linter_cache dist build
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
