"""The loopback interface: where ``serve`` listens by default and the holder always does, and
which hosts count as this machine when deciding whether to warn about plain HTTP or a public bind."""

from __future__ import annotations

LOOPBACK_IP = "127.0.0.1"
"""The address the holder binds and its clients call (IPv4: the holder's socket is AF_INET)."""
LOOPBACK_HOSTS = frozenset({LOOPBACK_IP, "localhost", "::1"})
"""Host names and addresses that reach only this machine."""
