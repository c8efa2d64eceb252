# make demo  -- create the venv, install, and run sessionctl on an embedded SQLite file
# make test  -- create the venv and run the whole test suite
# make bench -- sessionctl against its peers, as ratios with goals (bench/results.md, README.md)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO_DB := demo/sessions.db

.PHONY: install demo test bench clean wrangler

# The real wrangler (pinned in tests/wrangler/package-lock.json) for the interop tests.
# 4.86.0 is the last release that runs on node 20.
WRANGLER_DIR := .cache/wrangler
WRANGLER     := $(WRANGLER_DIR)/node_modules/.bin/wrangler

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

demo: $(STAMP)
	rm -f $(DEMO_DB) $(DEMO_DB)-wal $(DEMO_DB)-shm
	mkdir -p demo
	SESSIONCTL_DB=$(DEMO_DB) $(BIN)/sessionctl migrate
	SESSIONCTL_DB=$(DEMO_DB) $(BIN)/sessionctl verify
	SESSIONCTL_DB=$(DEMO_DB) $(BIN)/sessionctl status
	$(BIN)/python examples/agent_example.py $(DEMO_DB)
	SESSIONCTL_DB=$(DEMO_DB) $(BIN)/sessionctl sessions list --all
	SESSIONCTL_DB=$(DEMO_DB) $(BIN)/sessionctl sessions show tg:1001
	SESSIONCTL_DB=$(DEMO_DB) $(BIN)/sessionctl sessions stats
	SESSIONCTL_DB=$(DEMO_DB) $(BIN)/sessionctl smoke

wrangler: $(WRANGLER)

$(WRANGLER): tests/wrangler/package.json tests/wrangler/package-lock.json
	@command -v npm >/dev/null || { echo "npm is required for the wrangler interop tests (node >= 20.3)"; exit 1; }
	mkdir -p $(WRANGLER_DIR)
	cp tests/wrangler/package.json tests/wrangler/package-lock.json $(WRANGLER_DIR)/
	cd $(WRANGLER_DIR) && npm ci --no-audit --no-fund --loglevel=error
	test -x $@ && touch $@

# Two workers, each test module on one of them (a module's wrangler dev server is started once).
test: $(STAMP) $(WRANGLER)
	SESSIONCTL_TEST_WRANGLER=$(abspath $(WRANGLER)) $(BIN)/python -m pytest -n 2 --dist loadfile

clean:
	rm -rf $(VENV) $(WRANGLER_DIR) demo .pytest_cache .hypothesis

# Full scale: 10k and 1M sessions, cleanup on 2M, import of 200k. BENCH_SCALE=0.02 for a quick run.
bench: $(STAMP) $(WRANGLER)
	BENCH_WRANGLER=$(abspath $(WRANGLER)) $(BIN)/python bench/bench.py
