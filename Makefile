# landsurf — the commands a newcomer needs. `make demo` runs the box, `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: venv viewer demo test bench clean system-deps

$(BIN)/landsurf: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

venv: $(BIN)/landsurf viewer

# The web viewer's one npm dependency (MapLibre GL, pinned by catalog/viewer/package-lock.json), installed with
# `npm ci` and its dist files copied where the app serves them: no CDN and no network once built.
VIEWER  = catalog/viewer
MAPLIBRE = $(VIEWER)/node_modules/maplibre-gl
viewer: $(VIEWER)/static/vendor/maplibre-gl.mjs

$(VIEWER)/static/vendor/maplibre-gl.mjs: $(VIEWER)/package.json $(VIEWER)/package-lock.json
	cd $(VIEWER) && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
	mkdir -p $(VIEWER)/static/vendor
	cp $(MAPLIBRE)/dist/maplibre-gl-worker.mjs $(MAPLIBRE)/dist/maplibre-gl.css $(VIEWER)/static/vendor/
	cp $(MAPLIBRE)/LICENSE.txt $(VIEWER)/static/vendor/maplibre-gl.LICENSE.txt
	cp $(MAPLIBRE)/dist/maplibre-gl.mjs $@

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
	rm -rf $(VENV) .landsurf $(VIEWER)/node_modules $(VIEWER)/static/vendor
