"""Who holds an embedded store: a process identity that survives pid reuse, and the holder file.

A process is named by its pid and its start time (field 22 of ``/proc/PID/stat``, clock ticks
since boot): a pid the kernel gave to another process since has another start time, so a record
of a dead holder is never mistaken for a live one.

``<store>/.<collection>.holder.json`` (mode 0600, written atomically) says where the process that
holds the store (``ftfsearch serve``) listens for the other commands: a port on 127.0.0.1 and a
random secret that each request carries. Only the user who can read the file can drive the holder.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftfsearch.net import LOOPBACK_IP


def start_time(pid: int) -> int | None:
    """The start time of process ``pid`` (clock ticks since boot), None when there is none."""
    try:
        raw = Path(f"/proc/{int(pid)}/stat").read_text(encoding="utf-8", errors="replace")
    except (OSError, ValueError):
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after the last ')'.
    fields = raw[raw.rfind(")") + 2 :].split()
    try:
        return int(fields[19])  # field 22 of the whole line
    except (IndexError, ValueError):
        return None


def alive(pid: int | None, started: int | None) -> bool:
    """Whether the process ``pid`` that started at ``started`` still runs."""
    if not pid or pid <= 0:
        return False
    now = start_time(pid)
    if now is None:
        return False
    return started is None or now == started


def identity() -> dict[str, int | None]:
    """This process as the lock file records it."""
    pid = os.getpid()
    return {"pid": pid, "start": start_time(pid)}


def parse_lock_record(text: str) -> tuple[int | None, int | None]:
    """(pid, start) from a lock file's text: JSON now, a bare pid in stores of earlier versions."""
    text = text.strip()
    if not text:
        return None, None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = text
    if isinstance(data, dict):
        pid, start = data.get("pid"), data.get("start")
        return (pid if isinstance(pid, int) else None), (start if isinstance(start, int) else None)
    if isinstance(data, int) or (isinstance(data, str) and data.isdigit()):
        return int(data), None
    return None, None


def holder_path(store_dir: Path, collection: str) -> Path:
    return Path(store_dir) / f".{collection}.holder.json"


@dataclass(frozen=True)
class HolderRecord:
    """Where the holder of a store listens: ``http://127.0.0.1:port``, with ``secret``."""

    port: int
    secret: str
    pid: int
    start: int | None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK_IP}:{self.port}"

    def to_dict(self) -> dict[str, Any]:
        return {"host": LOOPBACK_IP, "port": self.port, "secret": self.secret, "pid": self.pid, "start": self.start}


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def write_holder(path: Path, record: HolderRecord) -> None:
    """Create the holder file 0600 from the start (never readable by others), then rename it in."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, json.dumps(record.to_dict()).encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_holder(path: Path) -> HolderRecord | None:
    """The live holder's record, None when there is no file, it is unreadable, or its process is
    gone (a holder killed without its clean exit leaves the file; it is ignored)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        record = HolderRecord(int(data["port"]), str(data["secret"]), int(data["pid"]),
                              data.get("start") if isinstance(data.get("start"), int) else None)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record if alive(record.pid, record.start) else None


def remove_holder(path: Path, only_if_pid: int | None = None) -> None:
    """Remove the holder file (only when it is ``only_if_pid``'s, when given)."""
    if only_if_pid is not None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if int(data.get("pid", -1)) != only_if_pid:
                return
        except (OSError, ValueError, TypeError, AttributeError):
            pass
    try:
        path.unlink()
    except FileNotFoundError:
        pass
