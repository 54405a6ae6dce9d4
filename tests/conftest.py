"""Shared fixtures."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.qdrant_local import QdrantBinaryNotFound, QdrantServer, find_qdrant_binary
from ftfsearch.store import Store, open_store


# --- Qdrant server and stores ----------------------------------------------------------------


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


@pytest.fixture
def store_tmp(tmp_path: Path) -> Iterator[Path]:
    """A fresh directory for an embedded store, on tmpfs when available, removed afterwards."""
    root = fast_tmp_root()
    if root is None:
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="ftf-store-", dir=root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def qdrant_server() -> Iterator[str]:
    """URL of a real Qdrant server on loopback, started once per test session, no API key."""
    binary = qdrant_binary_or_skip()
    with QdrantServer(binary=binary, tmp_root=fast_tmp_root()) as server:
        yield server.url


@pytest.fixture(params=["edge", pytest.param("server", marks=pytest.mark.server)])
def store(request: pytest.FixtureRequest, store_tmp: Path) -> Iterator[Store]:
    """A fresh, empty store on each backend (the collection is not created yet)."""
    if request.param == "edge":
        s = open_store(
            collection="tiles", store_dir=store_tmp / "store", qdrant_url=None, api_key=None, timeout=10.0
        )
    else:
        url = request.getfixturevalue("qdrant_server")
        s = open_store(
            collection=f"t_{uuid.uuid4().hex[:12]}", store_dir=None, qdrant_url=url, api_key=None, timeout=10.0
        )
    try:
        yield s
    finally:
        s.close()
        if request.param == "server":  # keep the session's server small: drop what the test made
            admin = open_store(
                collection=s.collection, store_dir=None, qdrant_url=url, api_key=None, timeout=10.0
            )
            admin.drop_collection()
            admin.close()


# --- models ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random CLIP saved like a user's model, loaded through the same code path."""
    from ftfsearch.model.tiny import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("models") / "tiny-clip")
