# edge-agent — one entry point for people and CI.
#   make demo   the agent on its embedded demo site (simulated terminals, no broker)
#   make test   lint + types + every test (installs what the tests need first)
#   make bench  the benchmarks under bench/ (prints figures; not part of make test)

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
DURATION ?= 0
SOURCES := agent tests $(wildcard bench)

.PHONY: demo test lint types unit bench system-packages clean

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

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
