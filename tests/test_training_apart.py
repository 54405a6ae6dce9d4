"""The runtime never loads the training subpackage: only ``train`` and ``eval`` do, when they run.

Each check runs in a fresh interpreter, so what this test session imported does not count.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

RUNTIME = [
    "ftfsearch.cli",
    "ftfsearch.search",
    "ftfsearch.examples",
    "ftfsearch.labels",
    "ftfsearch.export",
    "ftfsearch.chips",
    "ftfsearch.store",
    "ftfsearch.model.loading",
    "ftfsearch.web.app",
    "ingest.pipeline",
]


def _loaded_after(code: str) -> list[str]:
    """The ``ftfsearch.training`` modules in ``sys.modules`` after ``code`` runs in a new interpreter."""
    probe = code + "\nimport sys, json\nprint(json.dumps(sorted(m for m in sys.modules if m.startswith('ftfsearch.training'))))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_runtime_modules_do_not_import_training() -> None:
    assert _loaded_after("\n".join(f"import {m}" for m in RUNTIME)) == []


def test_eval_command_imports_training_when_it_runs(tmp_path: Path) -> None:
    # The other side of the check above: the command does load it (here to refuse a missing file).
    code = (
        "from typer.testing import CliRunner\n"
        "from ftfsearch.cli import app\n"
        f"r = CliRunner().invoke(app, ['eval', '--data', {str(tmp_path / 'dataset_none.json')!r}])\n"
        "assert r.exit_code != 0 and 'dataset_none.json' in r.output, r.output\n"
    )
    assert "ftfsearch.training.datasets" in _loaded_after(code)
