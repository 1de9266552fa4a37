# edge-agent — one entry point for people and CI.
#   make demo   the agent on its embedded demo site (simulated terminals, no broker)
#   make test   lint + types + every test (installs what the tests need first)
#   make bench  the benchmarks under bench/ (prints figures; not part of make test)
#   make wheelhouse ARCH=amd64|arm64|armhf   build/wheelhouse-<arch>/: every wheel a release needs
#   make man    build/edge-agent.1, the man page, from the argument parser

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
DURATION ?= 0
ARCH ?= amd64
SOURCES := agent tests $(wildcard bench)

.PHONY: demo test lint types unit bench system-packages clean wheelhouse man

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

wheelhouse: $(VENV)/.runtime
	PYTHON=$(PY) scripts/wheelhouse.sh build/wheelhouse-$(ARCH) $(ARCH)

man: $(VENV)/.runtime
	@mkdir -p build
	$(PY) -m agent.manpage > build/edge-agent.1

clean:
	rm -rf build $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
