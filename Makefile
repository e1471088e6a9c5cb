# The two commands (and the bench). Each creates .venv and installs the pinned deps first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test check bench topology topology-bench clean

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(STAMP)

run: $(STAMP)
	$(PY) server.py

# Lint, format and types first: they take seconds and fail fast.
check: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

test: check
	bash .ci/system-packages
	$(PY) -m pytest

# The three-VM topology (network namespaces, root) and two instances behind a load balancer;
# both are part of `make test` too.
topology: $(STAMP)
	bash .ci/system-packages
	$(PY) -m pytest tests/test_topology.py tests/test_two_instances.py

topology-bench: $(STAMP)
	$(PY) deploy/topology/topology.py bench --output deploy/topology/latency-with-network.md

# Graded runs need wrk (installed here as root); `make bench ARGS=--quick` is a 1-2 minute smoke run.
bench: $(STAMP)
	bash bench/system-packages
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-bench.txt
	$(PY) bench/run.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
