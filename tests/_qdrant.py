"""The Qdrant server binary and a fast directory for its storage, for conftest and the tests that
start servers of their own."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from deploy.qdrant_local import QdrantBinaryNotFound, find_qdrant_binary


def qdrant_binary_or_skip() -> Path:
    """The verified Qdrant binary; skip when it is not installed (fail in CI, which installs it)."""
    try:
        return find_qdrant_binary()
    except QdrantBinaryNotFound as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the server tests: {exc}")
        pytest.skip(f"Qdrant server binary missing ({exc})")


def fast_tmp_root() -> Path | None:
    """tmpfs when there is one: Qdrant fsyncs every collection change, 100+ ms each on a disk.

    The store tests check behaviour, not durability, so memory-backed files test the same code.
    """
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else None
