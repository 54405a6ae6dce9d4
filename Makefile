# Quick start: `make demo`, then `make test`. Every install path pins torch==2.13.0 first:
# an unpinned torch would pull the newest CUDA build (several GB).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_STORE := .demo/store
DEMO_SCENE := tests/data/RGB.byte.tif
DEMO_QUERY ?= green farmland next to a river
DEFAULT_MODEL := ftfsearch/model/default/ftf_config.json

.PHONY: venv qdrant demo demo-model serve test clean

venv: $(VENV)/.installed ftfsearch/web/static/vendor/leaflet/leaflet.js

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	touch $@

qdrant: .qdrant/bin/qdrant

# Leaflet is bundled from the npm registry at build time (the page works offline, no CDN).
ftfsearch/web/static/vendor/leaflet/leaflet.js: scripts/get-leaflet.sh
	bash scripts/get-leaflet.sh

.qdrant/bin/qdrant: scripts/get-qdrant.sh
	bash scripts/get-qdrant.sh

# The demo uses the shipped model; before one ships it builds a tiny random CLIP (rankings then mean nothing).
demo-model: venv
	@if [ -f $(DEFAULT_MODEL) ]; then echo "model: shipped default"; \
	else $(BIN)/python -m ftfsearch.model.tiny .demo/tiny-clip; fi

# A fresh demo store each time: a store keeps the model it was built with, and the shipped
# model changes between commits.
demo: venv demo-model
	@rm -rf $(DEMO_STORE)
	@model=$$([ -f $(DEFAULT_MODEL) ] || echo "--model .demo/tiny-clip"); \
	$(BIN)/ftfsearch ingest $(DEMO_SCENE) --store $(DEMO_STORE) $$model && \
	$(BIN)/ftfsearch scenes --store $(DEMO_STORE) && \
	$(BIN)/ftfsearch query "$(DEMO_QUERY)" --k 5 --store $(DEMO_STORE) $$model

serve: demo
	@model=$$([ -f $(DEFAULT_MODEL) ] || echo "--model .demo/tiny-clip"); \
	$(BIN)/ftfsearch serve --store $(DEMO_STORE) $$model

# pytest exits 5 when it collected no tests: that is a failure here.
test: venv qdrant
	@$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

clean:
	rm -rf .demo .pytest_cache
