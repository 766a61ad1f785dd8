# HA Ingestor. `make demo` runs the whole pipeline against local services; `make test` runs the suite.
# Both set up what a fresh Debian machine lacks (Debian packages when run as root, the virtualenv).

PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(VENV)/bin/pip
PYTEST_ARGS ?=

FUZZ_EXAMPLES ?= 50000

.PHONY: help system-deps venv test demo chaos fuzz bench clean

help:
	@echo "make demo    - whole pipeline against local Mosquitto, InfluxDB and Home Assistant"
	@echo "make test    - the test suite (installs what is missing)"
	@echo "make chaos   - the full chaos run (faults, ledger vs InfluxDB)"
	@echo "make fuzz    - the property-based suites at length (50 000 examples a boundary, random seed)"
	@echo "make bench   - every benchmark; results go to docs/benchmarks.md by hand"

system-deps:
	@scripts/install-system-deps.sh

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.installed

test: system-deps venv
	$(PY) -m pytest -q -ra $(PYTEST_ARGS)

demo: system-deps venv
	$(PY) scripts/demo.py $(ARGS)

chaos: system-deps venv
	$(PY) -m tests.chaos --profile full $(ARGS)

# FUZZ_SEED=<n> draws the same examples again (a failure report names its seed).
fuzz: system-deps venv
	@seed=$${FUZZ_SEED:-$$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}; \
	echo "make fuzz: seed $$seed, $(FUZZ_EXAMPLES) examples per boundary"; \
	FUZZ_SEED=$$seed FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q -ra -s -m fuzz \
		-o timeout=14400 $(PYTEST_ARGS) || { echo "make fuzz: failed with seed $$seed"; exit 1; }; \
	echo "make fuzz: passed with seed $$seed"

bench: system-deps venv
	$(PY) bench/queue_bench.py
	$(PY) bench/mqtt_bench.py
	$(PY) bench/ha_bench.py
	$(PY) bench/writer_bench.py
	$(PY) bench/e2e_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .demo
