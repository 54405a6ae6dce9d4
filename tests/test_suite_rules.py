"""Rules of the test suite itself: test modules share helpers through underscore modules, never by
importing each other or conftest, and only ``tests/_data.py`` knows where ``../shared/data`` is."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from _data import require_shared_data

TESTS = Path(__file__).resolve().parent


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_no_test_module_imports_another_or_conftest() -> None:
    offenders = {
        path.name: sorted(m for m in _imported_modules(path) if m.startswith("test_") or m == "conftest")
        for path in sorted(TESTS.glob("*.py"))
    }
    assert {name: mods for name, mods in offenders.items() if mods} == {}


def test_only_the_data_module_locates_the_shared_data() -> None:
    needle = '/ "' + 'shared" /'  # split, so that this file does not match itself
    locating = [
        path.name for path in sorted(TESTS.glob("*.py"))
        if path.name != "_data.py" and needle in path.read_text(encoding="utf-8")
    ]
    assert locating == []


def test_missing_shared_data_skips_locally_and_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no-such-set"):
        require_shared_data("no-such-set")
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match="no-such-set"):
        require_shared_data("no-such-set")
