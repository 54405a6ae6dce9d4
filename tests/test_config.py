"""Settings precedence: flags > environment > config file > defaults; the key never leaks."""

from __future__ import annotations


import pytest

from ftfsearch.config import load_settings
from ftfsearch.errors import BadInput


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for var in ["FTF_STORE", "QDRANT_URL", "QDRANT_API_KEY", "FTF_COLLECTION", "FTF_MODEL", "FTF_DEVICE", "FTF_TIMEOUT"]:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("FTF_CONFIG", str(tmp_path / "config.toml"))


def test_precedence(monkeypatch, tmp_path):
    (tmp_path / "config.toml").write_text('collection = "from_file"\nmodel = "file_model"\ntimeout = 5\n')
    s = load_settings()
    assert (s.collection, s.model, s.timeout) == ("from_file", "file_model", 5.0)
    monkeypatch.setenv("FTF_COLLECTION", "from_env")
    assert load_settings().collection == "from_env"
    assert load_settings(collection="from_flag").collection == "from_flag"
    assert load_settings(collection=None).collection == "from_env"


def test_store_dir_default_and_key_redaction(monkeypatch, tmp_path):
    monkeypatch.setenv("QDRANT_API_KEY", "s3cret-key")
    monkeypatch.setenv("FTF_STORE", str(tmp_path / "st"))
    s = load_settings()
    assert s.resolved_store_dir == tmp_path / "st"
    assert "s3cret-key" not in repr(s.redacted())


def test_bad_config_file_is_one_clear_error(tmp_path):
    (tmp_path / "config.toml").write_text("collection = [unclosed")
    with pytest.raises(BadInput, match="config.toml"):
        load_settings()
    (tmp_path / "config.toml").write_text('colection = "typo"')
    with pytest.raises(BadInput, match="unknown keys colection"):
        load_settings()


def test_bad_timeout(monkeypatch):
    monkeypatch.setenv("FTF_TIMEOUT", "soon")
    with pytest.raises(BadInput, match="FTF_TIMEOUT"):
        load_settings()


def test_settings_repr_hides_the_key(monkeypatch):
    monkeypatch.setenv("QDRANT_API_KEY", "s3cret-key")
    assert "s3cret-key" not in repr(load_settings())


def test_unreadable_config_file_is_one_clear_error(tmp_path, monkeypatch):
    """A config path inside a directory we may not enter (a non-root user's view of it)."""
    import errno
    from pathlib import Path

    def denied(self):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "is_file", denied)
    with pytest.raises(BadInput, match="config file"):
        load_settings()


def test_settings_open_the_store_they_name(tmp_path):
    """One rule for every command and serve: the server when a URL is set, else the embedded
    store in the resolved directory, read-only when asked."""
    from ftfsearch.errors import PermissionDenied
    from ftfsearch.store.edge import EdgeStore
    from ftfsearch.store.server import ServerStore

    settings = load_settings(store_dir=str(tmp_path / "store"), collection="mine")
    store = settings.open_store(read_only=True)
    try:
        assert isinstance(store, EdgeStore) and store.collection == "mine" and store.meta() is None
        with pytest.raises(PermissionDenied):
            store.delete_scene("x")
    finally:
        store.close()
    assert not (tmp_path / "store").exists()  # read-only opens create nothing
    remote = load_settings(store_dir=str(tmp_path / "store"), qdrant_url="http://127.0.0.1:9", timeout=3)
    server = remote.open_store(read_only=True)  # the URL wins over the directory
    try:
        assert isinstance(server, ServerStore) and server.url.startswith("http://127.0.0.1:9")
        assert server.timeout == 3.0
    finally:
        server.close()
