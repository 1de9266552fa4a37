# edge-agent — one entry point for people and CI.
#   make demo   the agent on its embedded demo site (simulated terminals, no broker)
#   make test   lint + types + every test (installs what the tests need first)
#   make bench  the benchmarks under bench/ (prints figures; not part of make test)
#   make deb    dist/edge-agent_<version>_$(ARCH).deb (ARCH=amd64|arm64|armhf), checked by lintian
#   make bundle dist/edge-agent-<version>-bundle.tar: every architecture's .deb, offline README

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
DURATION ?= 0
SOURCES := agent tests $(wildcard bench)

.PHONY: demo test lint types unit bench system-packages deb bundle clean
ARCH ?= amd64

$(VENV)/.runtime: pyproject.toml
	@scripts/bootstrap-venv.sh "$(PYTHON)" "$(VENV)" runtime
	@touch $@

$(VENV)/.dev: pyproject.toml
	@scripts/bootstrap-venv.sh "$(PYTHON)" "$(VENV)" dev
	@touch $@ $(VENV)/.runtime

demo: $(VENV)/.runtime
	$(PY) -m agent demo --duration $(DURATION)

system-packages:
	@scripts/system-packages.sh mosquitto socat
	@# The container tests (tests/test_container.py) need these; without them they are skipped.
	@if [ "$$(id -u)" = 0 ]; then scripts/system-packages.sh systemd-container mmdebstrap \
		|| echo "systemd-container/mmdebstrap not installed: the container tests will be skipped"; fi

deb:
	@scripts/build-deb.sh $(ARCH)
	@if command -v lintian >/dev/null; then lintian dist/edge-agent_*_$(ARCH).deb; \
	else echo "lintian is not installed (apt-get install lintian): the .deb is not checked"; fi

bundle:
	@scripts/bundle.sh

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check $(SOURCES)
	$(VENV)/bin/ruff format --check $(SOURCES)

types: $(VENV)/.dev
	$(VENV)/bin/mypy

unit: $(VENV)/.dev system-packages
	$(PY) -m pytest $(PYTEST_ARGS)

test: lint types unit

bench: $(VENV)/.dev
	$(PY) bench/poll_scale.py
	$(PY) bench/rtu_bus.py

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache .hypothesis
