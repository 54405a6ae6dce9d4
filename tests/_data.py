"""Where the tests' data lives: small fixtures in ``tests/data``, the real data sets in ``../shared/data``.

The one policy for the shared data: a test that needs it skips when it is missing beside the
checkout, and fails under CI (``CI=1``, as ``.ci/run`` sets), where it must be there. Tests take
the ``shared_data`` fixture (``tests/conftest.py``), or call :func:`require_shared_data` where a
fixture cannot reach (a helper module's own fixtures).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
FIXTURES = TESTS / "data"
SHARED_DATA = TESTS.parents[1] / "shared" / "data"
"""``../shared/data`` beside the checkout (read-only; its README describes it)."""
TINY_CAPTIONS = FIXTURES / "captions" / "dataset_ucm_tiny.json"
"""46 UCM-Captions images at 64 px with their captions and splits (see ``tests/data/LICENSE.md``)."""


def require_shared_data(*parts: str) -> Path:
    """``../shared/data/<parts>``; skip the test when it is missing, fail it under CI."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        message = f"{path} is missing: the shared data set must be beside the checkout"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run every test: {message}")
        pytest.skip(message)
    return path
