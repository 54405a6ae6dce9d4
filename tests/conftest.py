"""Shared fixtures. Helpers that test modules import live in underscore modules beside this one."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from _data import require_shared_data
from _qdrant import fast_tmp_root, qdrant_binary_or_skip
from deploy.qdrant_local import QdrantServer
from ftfsearch.store import Store, open_store


# --- data ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``: skipped when it is missing, a failure under CI (see ``tests/_data.py``)."""
    return require_shared_data()


# --- Qdrant server and stores ----------------------------------------------------------------


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
    from _tiny import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("models") / "tiny-clip")
