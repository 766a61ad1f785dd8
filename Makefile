# HA Ingestor. `make demo` runs the whole pipeline against local services; `make test` runs the suite.
# Both set up what a fresh Debian machine lacks (Debian packages when run as root, the virtualenv).

PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(VENV)/bin/pip
PYTEST_ARGS ?=

.PHONY: help system-deps venv test demo chaos catchup bench clean

help:
	@echo "make demo    - whole pipeline against local Mosquitto, InfluxDB and Home Assistant"
	@echo "make test    - the test suite (installs what is missing)"
	@echo "make chaos   - the full chaos run (faults, ledger vs InfluxDB)"
	@echo "make catchup - the HA catch-up tests at full length (4-minute collector outages)"
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

catchup: system-deps venv
	HA_CATCHUP_GAP_S=240 HA_CATCHUP_HANDOFF=10000 $(PY) -m pytest -q -s -ra \
		tests/test_ha_catchup.py $(PYTEST_ARGS)

bench: system-deps venv
	$(PY) bench/queue_bench.py
	$(PY) bench/mqtt_bench.py
	$(PY) bench/ha_bench.py
	$(PY) bench/ha_catchup_bench.py
	$(PY) bench/writer_bench.py
	$(PY) bench/e2e_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .demo
