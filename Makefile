# make demo  -- create the venv, install, and run sessionctl on an embedded SQLite file
# make test  -- create the venv and run the whole test suite
# make bench -- start-up and throughput benchmarks (results in README.md)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO_DB := demo/sessions.db

.PHONY: install demo test bench clean

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

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) demo .pytest_cache .hypothesis

bench: $(STAMP)
	$(BIN)/python bench/bench.py
