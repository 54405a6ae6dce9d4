# Quick start: `make demo`, then `make test`. Every install path pins torch==2.13.0 first:
# an unpinned torch would pull the newest CUDA build (several GB).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_STORE := .demo/store
# A 0.35 m drone ortho (rice fields, a road, houses): a resolution the shipped model knows, and
# results a person can check by eye. 224 px tiles at half overlap, plus 448 px windows (level 2).
DEMO_SCENE := tests/data/pix4d_alpha_nodata.tif
DEMO_TILING := --tile-size 224 --overlap 0.5 --levels 1,2
DEMO_QUERY ?= a road between fields
DEMO_QUERY2 ?= houses with red roofs
# Search by example: more like the tile under this point (the houses at the north-west corner).
DEMO_LIKE ?= 115.16057,-8.58392

.PHONY: venv qdrant demo serve lint test clean qgis-plugin

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	touch $@

qdrant: .qdrant/bin/qdrant

.qdrant/bin/qdrant: scripts/get-qdrant.sh
	bash scripts/get-qdrant.sh

# A fresh demo store each time: a store keeps the model it was built with, and the shipped
# model changes between commits.
demo: venv
	@rm -rf $(DEMO_STORE)
	$(BIN)/ftfsearch ingest $(DEMO_SCENE) --store $(DEMO_STORE) $(DEMO_TILING)
	$(BIN)/ftfsearch scenes --store $(DEMO_STORE)
	$(BIN)/ftfsearch query "$(DEMO_QUERY)" --k 5 --store $(DEMO_STORE)
	$(BIN)/ftfsearch query "$(DEMO_QUERY2)" --k 5 --store $(DEMO_STORE)
	$(BIN)/ftfsearch query --like=$(DEMO_LIKE) --k 5 --store $(DEMO_STORE)

serve: demo
	$(BIN)/ftfsearch serve --store $(DEMO_STORE)

# The gates (configured in pyproject.toml): ruff for bugs and a complexity limit of 14, mypy for types.
lint: venv
	$(BIN)/ruff check ftfsearch ingest deploy bench tests scripts experiments docs qgis_plugin
	$(BIN)/mypy

# pytest exits 5 when it collected no tests: that is a failure here.
test: venv qdrant
	@$(BIN)/python -m pytest -q -p no:cacheprovider --durations=20 $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

# The QGIS plugin (qgis_plugin/ftfsearch_qgis) as the zip QGIS's "Install from ZIP" takes; stdlib only.
qgis-plugin:
	$(PYTHON) scripts/build_qgis_plugin.py --out dist/ftfsearch_qgis.zip

clean:
	rm -rf .demo .pytest_cache
