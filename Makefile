# HA Ingestor. `make demo` runs the whole pipeline against local services; `make test` runs the suite.
# Both set up what a fresh Debian machine lacks (Debian packages when run as root, the virtualenv).

PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(VENV)/bin/pip
PYTEST_ARGS ?=

FUZZ_EXAMPLES ?= 50000

.PHONY: help system-deps venv ha-venvs test images addon demo dashboards chaos fuzz catchup fleet bench clean

help:
	@echo "make demo    - whole pipeline against local Mosquitto, InfluxDB and Home Assistant"
	@echo "make test    - the test suite (installs what is missing)"
	@echo "make images  - build and run the product and add-on images with podman (root)"
	@echo "make addon   - put the ha-ingestor wheel into the add-on folder, to install it locally"
	@echo "make dashboards - pictures of the InfluxDB Grafana dashboards for docs/, from a real run"
	@echo "make chaos   - the full chaos run (faults, ledger vs InfluxDB)"
	@echo "make fuzz    - the property-based suites at length (50 000 examples a boundary, random seed)"
	@echo "make catchup - the HA catch-up tests at full length (4-minute collector outages)"
	@echo "make fleet   - the full fleet run: 20 sites through a JetStream cluster, with faults"
	@echo "make bench   - every benchmark; results go to docs/benchmarks.md by hand"
	@echo "make ha-venvs - install the Home Assistant venvs now (the tests do on first use)"

system-deps:
	@scripts/install-system-deps.sh

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.installed

# Every tested Home Assistant release in its own venv under ~/.cache/ha-ingestor (timed).
ha-venvs: venv
	$(PY) -m tests.support.ha_venv

test: system-deps venv
	$(PY) -m pytest -q -ra $(PYTEST_ARGS)

# The image tests are part of `make test` where podman is installed (CI installs it); this target
# installs podman, runc and debootstrap and runs only them.
images: venv
	@scripts/install-system-deps.sh --images
	$(PY) -m pytest -q -ra tests/test_images.py $(PYTEST_ARGS)

addon: venv
	rm -f deploy/homeassistant-addon/ha-ingestor/wheels/*.whl
	$(PIP) wheel --quiet --no-deps --wheel-dir deploy/homeassistant-addon/ha-ingestor/wheels .

demo: system-deps venv
	$(PY) scripts/demo.py $(ARGS)

dashboards: system-deps venv
	$(PIP) install --quiet -e '.[docs]'
	$(PY) scripts/render_dashboards.py $(ARGS)

chaos: system-deps venv
	$(PY) -m tests.chaos --profile full $(ARGS)

# 20 sites → a three-node JetStream cluster → 2 central writers → InfluxDB, with 60 s outages
# (about 5 minutes); make test runs the same at a smaller scale.
fleet: system-deps venv
	$(PY) -m tests.fleet --profile full $(ARGS)

# FUZZ_SEED=<n> draws the same examples again (a failure report names its seed).
fuzz: system-deps venv
	@seed=$${FUZZ_SEED:-$$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}; \
	echo "make fuzz: seed $$seed, $(FUZZ_EXAMPLES) examples per boundary"; \
	FUZZ_SEED=$$seed FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q -ra -s -m fuzz \
		-o timeout=14400 $(PYTEST_ARGS) || { echo "make fuzz: failed with seed $$seed"; exit 1; }; \
	echo "make fuzz: passed with seed $$seed"

catchup: system-deps venv
	HA_CATCHUP_GAP_S=240 HA_CATCHUP_HANDOFF=10000 $(PY) -m pytest -q -s -ra \
		tests/test_ha_catchup.py $(PYTEST_ARGS)

bench: system-deps venv
	$(PY) bench/queue_bench.py
	$(PY) bench/mqtt_bench.py
	$(PY) bench/ha_bench.py
	$(PY) bench/ha_catchup_bench.py
	$(PY) bench/writer_bench.py
	$(PY) bench/convert_profile.py
	$(PY) bench/import_bench.py
	$(PY) bench/e2e_bench.py
	$(PY) bench/fleet_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .demo
