# Two commands do everything on a fresh machine with only Python:
#   make up     install what is missing, then start the whole system (Ctrl-C stops it)
#   make test   install what is missing, then run the linters and every test
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system-packages up down test lint unit e2e

setup: system-packages $(VENV)/.installed

system-packages:
	@command -v nginx >/dev/null 2>&1 || command -v /usr/sbin/nginx >/dev/null 2>&1 || { \
	  echo "installing nginx (apt)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq nginx >/dev/null; }
	@{ command -v wrk && command -v curl; } >/dev/null 2>&1 || { \
	  echo "installing wrk and curl (apt; the benchmarks' load generator, the seed's curl in tests)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq wrk curl >/dev/null; }

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip uv
	$(VENV)/bin/uv pip install -q --python $(PY) -e '.[test]'
	touch $@

up: setup
	PATH="$(CURDIR)/$(VENV)/bin:/usr/sbin:$$PATH" $(VENV)/bin/modelserve up

down:
	$(VENV)/bin/modelserve down

lint: setup
	$(VENV)/bin/ruff check supervisor tests
	$(VENV)/bin/mypy supervisor

unit: setup
	PATH="$(CURDIR)/$(VENV)/bin:/usr/sbin:$$PATH" $(PY) -m pytest tests/unit

e2e: setup
	PATH="$(CURDIR)/$(VENV)/bin:/usr/sbin:$$PATH" $(PY) -m pytest tests/e2e

test: setup lint
	PATH="$(CURDIR)/$(VENV)/bin:/usr/sbin:$$PATH" $(PY) -m pytest -ra
