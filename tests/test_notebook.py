"""docs/notebook.ipynb runs, top to bottom, in a real kernel (nbclient): the notebook API ingests the
demo scene with a Jupyter progress widget, searches it, and draws the results with ``.explore()``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "docs" / "notebook.ipynb"

pytestmark = pytest.mark.slow


def _outputs(cell: dict) -> list[dict]:
    return list(cell.get("outputs", []))


def test_the_notebook_runs_on_the_demo_scene(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTF_STORE", str(tmp_path / "store"))
    monkeypatch.delenv("QDRANT_URL", raising=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                      resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError (with the cell's traceback) if any cell fails
    code = [c for c in nb.cells if c.cell_type == "code"]
    source = {i: c.source for i, c in enumerate(code)}
    ingest = next(c for c in code if "db.ingest(" in c.source)
    printed = "".join(o.get("text", "") for o in _outputs(ingest) if o.get("output_type") == "stream")
    assert "complete" in printed, printed
    # the progress bar rendered as a Jupyter widget (tqdm.auto), not as text
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in _outputs(ingest)), source
    table = next(c for c in code if "to_geodataframe()" in c.source and "hits =" in c.source)
    html = "".join(o.get("data", {}).get("text/html", "") for o in _outputs(table))
    assert "<table" in html and "POLYGON" in html and "a road" not in html
    explore = next(c for c in code if ".explore(" in c.source)
    drawn = "".join(o.get("data", {}).get("text/html", "") for o in _outputs(explore))
    assert "leaflet" in drawn.lower() and "folium" in drawn.lower()
    assert (tmp_path / "store").is_dir() and os.listdir(tmp_path / "store")
