# The two commands (and the bench). Each creates .venv and installs the pinned deps first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: budget run test test-fast check container-test locust go bench topology topology-bench clean

$(STAMP): requirements.txt requirements-dev.txt requirements-locust.txt
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

# Every test (about 6.5 minutes here): as root with apt it first installs the programs the root
# and browser tests drive (.ci/system-packages).
test: check
	bash .ci/system-packages
	$(PY) -m pytest

# The tests that need neither root, nor programs from .ci/system-packages, nor a browser, nor
# more than a few seconds each (markers root, browser, slow in pytest.ini): under a minute (57 s),
# for the edit-test loop. Not a substitute for `make test` before a commit.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not root and not browser"

# The API's container image (Dockerfile), built with podman and run against the test session's
# PostgreSQL and Redis; compose.yaml through a Compose parser. Minutes on a cold cache.
container-test: $(STAMP)
	$(PY) -m pytest tests/test_container.py -o 'addopts=-ra --strict-markers -p no:locust'

# Locust's web UI (http://127.0.0.1:8089, this machine only unless LOCUST_WEB_HOST says
# otherwise) against a running API (`make run`, compose, a VM):
# make locust URL=http://192.168.100.10:8000 ADMIN_TOKEN=...
# Run from the root, which Locust puts on sys.path: the locustfile imports bench.mix.
URL ?= http://127.0.0.1:8000
LOCUST_WEB_HOST ?= 127.0.0.1
locust: $(STAMP)
	ADMIN_TOKEN="$${ADMIN_TOKEN:-$$(cat .data/admin.token)}" $(PY) -m locust -f bench/locustfile.py --host $(URL) \
		--web-host $(LOCUST_WEB_HOST)

# The three-VM topology (network namespaces, root) and two instances behind a load balancer;
# both are part of `make test` too.
topology: $(STAMP)
	bash .ci/system-packages
	$(PY) -m pytest tests/test_topology.py tests/test_two_instances.py

# PostgreSQL under Patroni + etcd in the namespace topology (root), broken four ways under a
# stream of recharges; ends with one line per scenario. Part of `make test` too.
failover-test: $(STAMP)
	bash .ci/system-packages
	@rm -f /tmp/trft-failover-summary
	$(PY) -m pytest tests/test_failover.py; status=$$?; echo; cat /tmp/trft-failover-summary 2>/dev/null; exit $$status

topology-bench: $(STAMP)
	$(PY) -m deploy.topology.topology bench --output deploy/topology/latency-with-network.md

# The Go version of the hot endpoints (go/README.md), built offline from Debian's packages
# (installed here as root when missing) into go/bin/travel-go.
go:
	sh go/build.sh

# Graded runs need wrk (installed here as root); `make bench ARGS=--quick` is a 1-2 minute smoke run.
# The bench runs the Go version beside the API (ARGS=--no-vs-go leaves it out).
bench: $(STAMP) go
	bash bench/system-packages
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-bench.txt
	$(PY) -m bench.run $(ARGS)

# The API's CPU per request for hit, uncached, recharge and boarding, itemised by part from
# py-spy profiles of the running API (README: Performance, "Where a request's CPU goes").
budget: $(STAMP)
	bash bench/system-packages
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-bench.txt
	$(PY) -m bench.budget $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
