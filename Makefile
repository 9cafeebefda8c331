# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench sandbox clean chromium server-up server-down

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/vouchflow demo

# the suite in TEST_WORKERS processes, whole modules each (module fixtures set up once);
# most tests wait on sandboxes, servers and subprocesses, so three share two cores well
TEST_WORKERS ?= 3
test: $(STAMP) chromium
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

# the browser tests drive Debian's chromium (headless); installed here when missing, so the
# tests themselves install nothing (under CI=true a missing chromium fails them)
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) || \
	  echo "warning: chromium is not installed (apt-get install -y chromium); browser tests need it" >&2

# a Prefect server for vouchflow on this machine (PostgreSQL when VOUCHFLOW_PREFECT_DATABASE_URL
# is set), the vouchflow work pool, limits, automations, deployments and WORKERS workers
WORKERS ?= 1
server-up: $(STAMP)
	$(BIN)/vouchflow server up --workers $(WORKERS)

server-down: $(STAMP)
	$(BIN)/vouchflow server down

lint: $(STAMP)
	$(BIN)/ruff check .

sandbox: $(STAMP)
	$(BIN)/vouchflow sandbox up

bench: $(STAMP)
	$(BIN)/python -m bench sync_catalog --skus 20000

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
