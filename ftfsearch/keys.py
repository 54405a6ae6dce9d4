"""API keys for ``ftfsearch serve``: named keys with a role, kept hashed in one JSON file.

A key is 32 random bytes (``ftf_`` + URL-safe base64), shown once when it is made and never stored:
the file keeps a per-key random salt and SHA-256(salt + key). A fast hash is the right one here: the
keys are random, not chosen by people, so there is nothing for a slow hash to protect against a
guess; and every request is checked. Every check compares against every entry with
:func:`hmac.compare_digest` and never stops at the first match, so its time says nothing about which
keys exist. The file is written whole and atomically (0600); a running ``serve`` sees changes by the
file's mtime (:class:`KeyRing`), so ``keys rm`` revokes within a second or so without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ftfsearch.errors import BadInput

if TYPE_CHECKING:
    from limits import RateLimitItem

log = logging.getLogger(__name__)

Role = Literal["read", "write"]
ROLES: tuple[Role, ...] = ("read", "write")
"""``read``: search, chips, previews, scenes, labels; ``write``: also what changes the store."""
KEYS_ENV = "FTF_KEYS_FILE"
"""The environment variable that names the keys file (for containers)."""
DEFAULT_RATE_LIMIT = "1200/minute"
"""Requests per key (``limits`` notation; ``;`` joins several): a page of 100 results asks for 100 chips."""
KEY_PREFIX = "ftf_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
FORMAT = 1
RELOAD_EVERY_S = 1.0
"""How often a :class:`KeyRing` looks at the file's mtime."""


@dataclass(frozen=True)
class KeyEntry:
    """One key as stored: its name, role, salt and hash, and when it was made."""

    name: str
    role: Role
    salt: str
    sha256: str
    created: str

    def matches(self, key: bytes) -> bool:
        digest = hashlib.sha256(bytes.fromhex(self.salt) + key).hexdigest()
        return hmac.compare_digest(digest.encode("ascii"), self.sha256.encode("ascii"))


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise BadInput(f"`name` {name[:80]!r}: 1 to 64 letters, digits or _ . @ -, starting with a letter or digit")
    return name


def check_role(role: str) -> Role:
    if role not in ROLES:
        raise BadInput(f"`role` {role!r}: read or write")
    return role


def _entry(raw: Any, path: Path) -> KeyEntry:
    try:
        entry = KeyEntry(name=str(raw["name"]), role=check_role(str(raw["role"])), salt=str(raw["salt"]),
                         sha256=str(raw["sha256"]), created=str(raw.get("created", "")))
        bytes.fromhex(entry.salt), bytes.fromhex(entry.sha256)
    except (KeyError, TypeError, ValueError, BadInput) as exc:
        raise BadInput(f"`keys` {path}: an entry is not a key record ({exc}); manage the file with 'ftfsearch keys'") from None
    return entry


def read_keys(path: Path) -> list[KeyEntry]:
    """The entries of a keys file; a missing file is an error (``serve --keys`` names a file that
    ``keys add`` made), a malformed one too."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInput(f"`keys` {path}: no such file; make a key with 'ftfsearch keys add NAME --keys {path}'") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput(f"`keys` {path}: not a keys file ({exc}); manage it with 'ftfsearch keys'") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("keys"), list):
        raise BadInput(f"`keys` {path}: not an ftfsearch keys file (format {FORMAT}); manage it with 'ftfsearch keys'")
    return [_entry(raw, path) for raw in data["keys"]]


def _write_keys(path: Path, entries: list[KeyEntry]) -> None:
    """The whole file, replaced atomically, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"format": FORMAT, "keys": [asdict(e) for e in entries]}, fh, indent=1)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def add_key(path: Path, name: str, role: str) -> str:
    """Make a key ``name`` with ``role`` in the file (made if missing) and return the key: the only
    time it exists outside the client that keeps it."""
    check_name(name)
    entries = read_keys(path) if path.exists() else []
    if any(e.name == name for e in entries):
        raise BadInput(f"`name` {name!r}: a key of that name exists in {path}; remove it first ('ftfsearch keys rm')")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    salt = secrets.token_bytes(16)
    entries.append(KeyEntry(name=name, role=check_role(role), salt=salt.hex(),
                            sha256=hashlib.sha256(salt + key.encode("ascii")).hexdigest(),
                            created=datetime.now(timezone.utc).isoformat(timespec="seconds")))
    _write_keys(path, entries)
    return key


def remove_key(path: Path, name: str) -> None:
    """Revoke the key ``name``: gone from the file, so a running ``serve`` refuses it."""
    entries = read_keys(path)
    kept = [e for e in entries if e.name != name]
    if len(kept) == len(entries):
        raise BadInput(f"`name` {name!r}: no key of that name in {path}; 'ftfsearch keys list' shows them")
    _write_keys(path, kept)


@dataclass(frozen=True)
class Caller:
    """Who a request came from: the key's name and role."""

    name: str
    role: Role


class KeyRing:
    """The keys of a file as ``serve`` checks them, re-read when the file changes.

    The file is looked at no more than every :data:`RELOAD_EVERY_S`. A file that is gone or no
    longer readable leaves no key valid (a revocation must never be undone by a broken file)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries = read_keys(path)  # a bad file at start is the user's error, not a warning
        self._stamp = self._stat()
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def entries(self) -> list[KeyEntry]:
        with self._lock:
            now = time.monotonic()
            if now - self._checked >= RELOAD_EVERY_S:
                self._checked = now
                stamp = self._stat()
                if stamp != self._stamp:
                    self._stamp = stamp
                    try:
                        self._entries = read_keys(self.path)
                        log.info("keys file %s re-read: %d keys", self.path, len(self._entries))
                    except BadInput as exc:
                        self._entries = []
                        log.warning("%s; every key is refused until it is fixed", exc)
            return self._entries

    def caller(self, key: str) -> Caller | None:
        """The caller whose key this is, None for no valid key. Compares against every entry."""
        raw = key.encode("utf-8", "replace")
        found: Caller | None = None
        for entry in self.entries():
            if entry.matches(raw):
                found = Caller(entry.name, entry.role)
        return found


def parse_rate_limit(text: str) -> list["RateLimitItem"]:
    """``--rate-limit`` in ``limits`` notation (``1200/minute``; ``;`` joins several)."""
    from limits import parse_many

    try:
        items = list(parse_many(text))
    except ValueError:
        items = []
    if not items or any(item.amount < 1 for item in items):
        raise BadInput(f"`rate_limit` {text!r}: not a rate like 1200/minute or 20/second;600/minute")
    return items
