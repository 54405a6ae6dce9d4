"""The ONNX export cache (``ftfsearch.model.onnx_cache``): processes that write one key at once
never let a reader see half a file; a corrupt or stale file is rebuilt with one warning; a
directory that cannot be written (read-only, or a process past its file-size limit, as on a full
disk) leaves the export in memory, said once. The graphs here are bytes of a real export's size;
that the model's own exports go through the cache is tests/test_query_encoder.py's part."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ftfsearch.model import onnx_cache
from ftfsearch.model.onnx_cache import ExportKey

REPO = Path(__file__).resolve().parents[1]
KEY = ExportKey("text", "ftf:test-model:0123456789ab")
SIZE = 8 << 20
"""A tenth of the text tower's export: big enough that a write takes many syscalls."""


def graph(seed: int = 0) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest() * 4096  # 128 KiB
    return (block * (SIZE // len(block) + 1))[:SIZE]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = tmp_path / "onnx"
    monkeypatch.setenv(onnx_cache.CACHE_ENV, str(root))
    monkeypatch.setattr(onnx_cache, "_warned", set())
    yield root


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == onnx_cache.__name__ and r.levelno == logging.WARNING]


def test_an_export_is_stored_once_and_read_back(cache: Path, caplog: pytest.LogCaptureFixture) -> None:
    calls = []

    def export() -> bytes:
        calls.append(1)
        return graph()

    assert onnx_cache.cached_export(KEY, export) == graph() and len(calls) == 1
    assert onnx_cache.cached_export(KEY, export) == graph() and len(calls) == 1  # read, not exported
    assert set(cache.iterdir()) == {KEY.path(), KEY.header_path()} and KEY.path().name.startswith("text-")
    assert KEY.path().read_bytes() == graph()  # a plain graph file: the runtime reads it itself
    assert onnx_cache.read_path(KEY) == KEY.path()
    path = KEY.path()
    assert ExportKey("text", "ftf:test-model:ba9876543210").path() != path  # another model, another file
    assert warnings_of(caplog) == []


WRITER = """
import sys
from ftfsearch.model import onnx_cache
from ftfsearch.model.onnx_cache import ExportKey
sys.path.insert(0, {tests!r})
from test_onnx_cache import KEY, graph
for i in range(int(sys.argv[1])):
    assert onnx_cache.write(KEY, graph())
"""


def test_two_processes_writing_at_once_never_show_half_a_file(cache: Path, caplog: pytest.LogCaptureFixture) -> None:
    code = WRITER.format(tests=str(Path(__file__).parent))
    env = {**os.environ, onnx_cache.CACHE_ENV: str(cache), "PYTHONPATH": str(REPO)}
    writers = [subprocess.Popen([sys.executable, "-c", code, "5"], env=env, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    seen, whole = 0, graph()
    while any(w.poll() is None for w in writers):
        got = onnx_cache.read(KEY)  # None before the first write lands, else the whole graph
        if got is not None:
            assert got == whole
            seen += 1
    for w in writers:
        assert w.wait() == 0, w.stderr.read() if w.stderr else ""
    assert onnx_cache.read(KEY) == whole
    assert set(cache.iterdir()) == {KEY.path(), KEY.header_path()}  # no temporary file left behind
    assert warnings_of(caplog) == [] and seen > 0


@pytest.mark.parametrize("damage", ["truncated", "flipped", "garbage", "header", "stale"])
def test_a_corrupt_or_stale_file_is_rebuilt_with_one_warning(cache: Path, caplog: pytest.LogCaptureFixture,
                                                             damage: str) -> None:
    onnx_cache.write(KEY, graph())
    path, header = KEY.path(), KEY.header_path()
    raw = path.read_bytes()
    assert onnx_cache.read(KEY) == raw  # the file its header was written for: used without reading it twice
    if damage == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "flipped":  # same size: the changed identity sends it to the checksum
        i = len(raw) - 1000
        path.write_bytes(raw[:i] + bytes([raw[i] ^ 1]) + raw[i + 1:])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 4096)
    elif damage == "header":
        header.write_bytes(b"{")
    else:  # written by another onnxruntime: its header says so
        header.write_text(header.read_text().replace(onnx_cache._version("onnxruntime"), "0.0.1", 1))
    rebuilt = onnx_cache.cached_export(KEY, lambda: graph(1))
    assert rebuilt == graph(1)
    [message] = warnings_of(caplog)
    assert str(path) in message and "rebuilding it" in message
    assert ("stale" if damage == "stale" else "corrupt") in message, message
    caplog.clear()
    assert onnx_cache.cached_export(KEY, lambda: graph(2)) == graph(1)  # the rebuilt file is read
    assert warnings_of(caplog) == []


def _read_only(path: Path) -> None:
    path.chmod(0o555)
    if os.geteuid() == 0:  # root writes through mode bits: the immutable attribute stops it
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)]).returncode != 0:
            path.chmod(0o755)
            pytest.skip("running as root where chattr +i is unavailable: no read-only directory to test")


def test_a_read_only_directory_exports_in_memory_and_says_so_once(cache: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    cache.mkdir()
    _read_only(cache)
    try:
        assert onnx_cache.cached_export(KEY, graph) == graph()
        assert onnx_cache.cached_export(KEY, graph) == graph()  # the next load in the process: silent
        assert list(cache.iterdir()) == []
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(cache)], check=False)
        cache.chmod(0o755)
    [message] = warnings_of(caplog)
    assert str(cache) in message and "cannot be written" in message and onnx_cache.CACHE_ENV in message


FULL = """
import logging, resource, signal, sys
logging.basicConfig(level=logging.WARNING)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
sys.path.insert(0, {tests!r})
from ftfsearch.model import onnx_cache
from test_onnx_cache import KEY, graph
assert onnx_cache.cached_export(KEY, graph) == graph()
assert onnx_cache.cached_export(KEY, graph) == graph()
print("ok")
"""


def test_a_full_disk_exports_in_memory_and_leaves_no_partial_file(cache: Path) -> None:
    env = {**os.environ, onnx_cache.CACHE_ENV: str(cache), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", FULL.format(tests=str(Path(__file__).parent))], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "ONNX cache" in line]
    assert len(lines) == 1 and "cannot be written" in lines[0], proc.stderr
    assert list(cache.iterdir()) == []  # the temporary file went with the failed write


def test_a_graph_checked_against_its_crc_is_stamped_and_not_read_again(cache: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    onnx_cache.write(KEY, graph())
    path = KEY.path()
    copy = path.with_name("moved")
    shutil.copyfile(path, copy)
    os.replace(copy, path)  # the same bytes in another file: a cache directory copied elsewhere, say
    assert onnx_cache.read_path(KEY) == path  # checked against the CRC once ...
    reads: list[Path] = []
    original = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: reads.append(self) or original(self))
    assert onnx_cache.read_path(KEY) == path  # ... then the header knows this file: only the header is read
    assert reads == [KEY.header_path()]
