# landsurf — the commands a newcomer needs. `make demo` runs the box, `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: venv demo test bench clean system-deps

$(BIN)/landsurf: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

venv: $(BIN)/landsurf

# PostgreSQL 15 + PostGIS from Debian packages, when missing (needs root; CI runs as root).
system-deps:
	@bash .ci/system-deps.sh

demo: system-deps venv
	$(BIN)/landsurf demo

# Exit code 5 (no test collected) is a failure, not a pass.
test: system-deps venv
	@$(BIN)/pytest; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no test: failing"; exit 1; fi; exit $$rc

bench: venv
	$(BIN)/python -m bench.catalog_bench

clean:
	rm -rf $(VENV) .landsurf
