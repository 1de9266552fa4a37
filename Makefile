# edge-agent — one entry point for people and CI.
#   make demo   the agent on its embedded demo site (simulated terminals, no broker), in a fresh
#               state directory; DURATION=30 stops after 30 s, DEMO_ARGS=--keep-state reuses the last
#   make test   lint + types + every test (installs what the tests need first)
#   make bench  the benchmarks under bench/ (prints figures; not part of make test)
#   make wheelhouse ARCH=amd64|arm64|armhf   build/wheelhouse-<arch>/: every wheel a release needs
#   make man    build/edge-agent.1, the man page, from the argument parser
#   make deb    dist/edge-agent_<version>_$(ARCH).deb (ARCH=amd64|arm64|armhf), checked by lintian
#   make bundle dist/edge-agent-<version>-bundle.tar: every architecture's .deb, offline README

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
DURATION ?= 0
DEMO_ARGS ?=
ARCH ?= amd64
SOURCES := agent tests $(wildcard bench)

.PHONY: demo test lint types unit bench system-packages clean wheelhouse man deb bundle

$(VENV)/.runtime: pyproject.toml
	@scripts/bootstrap-venv.sh "$(PYTHON)" "$(VENV)" runtime
	@touch $@

$(VENV)/.dev: pyproject.toml
	@scripts/bootstrap-venv.sh "$(PYTHON)" "$(VENV)" dev
	@touch $@ $(VENV)/.runtime

demo: $(VENV)/.runtime
	$(PY) -m agent demo --duration $(DURATION) $(DEMO_ARGS)

system-packages:
	@scripts/system-packages.sh mosquitto socat
	@# The container tests (tests/test_container.py) need these; without them they are skipped.
	@if [ "$$(id -u)" = 0 ]; then scripts/system-packages.sh systemd-container mmdebstrap \
		|| echo "systemd-container/mmdebstrap not installed: the container tests will be skipped"; fi
	@# The inspection report's browser tests (tests/test_report.py) render it in Chromium, with a
	@# Chinese font for the Chinese report; without them those tests are skipped.
	@if [ "$$(id -u)" = 0 ]; then scripts/system-packages.sh chromium fonts-wqy-microhei \
		|| echo "chromium/fonts-wqy-microhei not installed: the report's browser tests will be skipped"; fi

# The wheelhouse and the man page are made afresh by scripts/build-deb.sh.
deb: $(VENV)/.runtime
	@scripts/build-deb.sh $(ARCH)
	@if command -v lintian >/dev/null; then lintian dist/edge-agent_*_$(ARCH).deb; \
	else echo "lintian is not installed (apt-get install lintian): the .deb is not checked"; fi

bundle: $(VENV)/.runtime
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
	$(PY) bench/update.py

wheelhouse: $(VENV)/.runtime
	PYTHON=$(PY) scripts/wheelhouse.sh build/wheelhouse-$(ARCH) $(ARCH)

man: $(VENV)/.runtime
	@mkdir -p build
	$(PY) -m agent.manpage > build/edge-agent.1

clean:
	rm -rf build dist $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
