# Two commands do everything on a fresh machine with only Python:
#   make up     install what running needs, if missing, then start the whole system (Ctrl-C stops it)
#   make test   install that and the test tools, if missing, then run the linters and every test
# Each install step is skipped once done (apt: the command exists; pip: a stamp file in the venv
# newer than pyproject.toml), so only the first run of each pays for it.
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup test-setup system-packages test-system-packages docker-engine up down test lint unit e2e

# What running needs: Nginx, and the package with its own dependencies (no test tool).
setup: system-packages $(VENV)/.installed
# What the linters and tests need on top of it.
test-setup: setup test-system-packages $(VENV)/.installed-test

system-packages:
	@command -v nginx >/dev/null 2>&1 || command -v /usr/sbin/nginx >/dev/null 2>&1 || { \
	  echo "installing nginx (apt)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq nginx >/dev/null; }
	@# Every served model runs in a bubblewrap box (supervisor/isolation/sandbox.py).
	@command -v bwrap >/dev/null 2>&1 || { \
	  echo "installing bubblewrap (apt; the box each served model runs in)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq bubblewrap >/dev/null; }

test-system-packages:
	@{ command -v wrk && command -v curl; } >/dev/null 2>&1 || { \
	  echo "installing wrk and curl (apt; the benchmarks' load generator, the seed's curl in tests)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq wrk curl >/dev/null; }
	@# Debian's Chromium drives the browser tests of the serving pages (Playwright never downloads one).
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing chromium (apt)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }

# The docker runtime's tests need a real Docker engine and a base image. Without a registry the
# base image is built from Debian packages (images/build-base-image.sh, skipped once it exists).
DOCKER_BASE_IMAGE ?= modelserve-base:bookworm
docker-engine:
	@command -v dockerd >/dev/null 2>&1 && command -v debootstrap >/dev/null 2>&1 && command -v docker-compose >/dev/null 2>&1 || { \
	  echo "installing docker.io, docker-compose and debootstrap (apt)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq docker.io docker-compose debootstrap >/dev/null; }
	@docker info >/dev/null 2>&1 || { \
	  echo "starting dockerd (log: /tmp/modelserve-dockerd.log)"; \
	  $(SUDO) sh -c 'setsid dockerd >/tmp/modelserve-dockerd.log 2>&1 </dev/null &'; \
	  for i in $$(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done; \
	  docker info >/dev/null 2>&1 || { echo "dockerd did not start:"; tail -20 /tmp/modelserve-dockerd.log; exit 1; }; }
	@# The swarm test (tests/e2e/swarm.py) makes a three-node swarm in network namespaces
	@# (iproute2, util-linux's nsenter) with Debian's registry (docker-registry) on the bridge.
	@command -v docker-registry >/dev/null 2>&1 && command -v ip >/dev/null 2>&1 && command -v nsenter >/dev/null 2>&1 || { \
	  echo "installing docker-registry, iproute2 and util-linux (apt; the swarm test's nodes and registry)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq docker-registry iproute2 util-linux >/dev/null; }
	bash images/build-base-image.sh $(DOCKER_BASE_IMAGE)

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip uv
	$(VENV)/bin/uv pip install -q --python $(PY) -e .
	touch $@

# After .installed (a changed pyproject.toml reinstalls both, runtime first).
$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(VENV)/bin/uv pip install -q --python $(PY) -e '.[test]'
	touch $@

up: setup
	PATH="$(CURDIR)/$(VENV)/bin:/usr/sbin:$$PATH" $(VENV)/bin/modelserve up

down:
	$(VENV)/bin/modelserve down

lint: test-setup
	$(VENV)/bin/ruff check supervisor tests
	$(VENV)/bin/mypy supervisor

unit: test-setup
	PATH="$(CURDIR)/$(VENV)/bin:/usr/sbin:$$PATH" $(PY) -m pytest tests/unit

e2e: test-setup docker-engine
	PATH="$(CURDIR)/$(VENV)/bin:/usr/sbin:$$PATH" $(PY) -m pytest tests/e2e

# Two workers: most of the suite waits on real processes (model loads, deploys, steady load
# phases), so the second core is better used by another file's tests. One file per worker
# (loadfile), so a module's running system starts once. No test depends on the machine's speed,
# so none needs the machine to itself.
PYTEST_WORKERS ?= 2
# Each part runs under .ci/timed, which records its duration for the table at the end of .ci/run
# (outside CI it records nothing). In order; the first to fail stops the rest.
TIMED := bash $(CURDIR)/.ci/timed
test:
	@$(TIMED) "make test-setup" $(MAKE) --no-print-directory test-setup
	@$(TIMED) "docker-engine (make test)" $(MAKE) --no-print-directory docker-engine
	@$(TIMED) "make lint" $(MAKE) --no-print-directory lint
	PATH="$(CURDIR)/$(VENV)/bin:/usr/sbin:$$PATH" $(TIMED) "pytest -n $(PYTEST_WORKERS)" \
	  $(PY) -m pytest -ra -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=40
