"""Acquisition times: one parser for dates the user gives and dates found in imagery metadata.

Every time is stored and compared as ISO 8601 in UTC (``2024-05-03T10:22:11Z``), the form
Qdrant's datetime index parses. A time without a zone is taken as UTC: TIFF date tags carry
none, and satellite metadata is UTC by convention.
"""

from __future__ import annotations

from datetime import datetime, timezone

from ftfsearch.errors import BadInput

_METADATA_FORMATS = ("%Y:%m:%d %H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y/%m/%d %H:%M:%S", "%Y:%m:%d")


def _as_utc(dt: datetime) -> datetime:
    if dt.tzinfo is None:
        return dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc)


def iso_utc(dt: datetime) -> str:
    """``2024-05-03T10:22:11Z`` (microseconds kept when there are any)."""
    return _as_utc(dt).isoformat().replace("+00:00", "Z")


def read_time(text: str) -> datetime | None:
    """A date or date-time in ISO 8601 (``2024-05-03``, ``2024-05-03T10:22Z``, with an offset)
    or the TIFF form (``2024:05:03 10:22:11``), as an aware UTC datetime; None when it is not one."""
    value = text.strip()
    if not value:
        return None
    for fmt in _METADATA_FORMATS:
        try:
            return _as_utc(datetime.strptime(value, fmt))
        except ValueError:
            pass
    try:
        # Python 3.11 reads 'Z', offsets, a space or 'T' between date and time, and a bare date
        return _as_utc(datetime.fromisoformat(value))
    except ValueError:
        return None


def parse_time(value: str | datetime | None, param: str) -> datetime | None:
    """A user-given time (``after``, ``before``, ``acquired``) as an aware UTC datetime.

    Raises :class:`BadInput` naming ``param`` when the value is not a date.
    """
    if value is None:
        return None
    if isinstance(value, datetime):
        return _as_utc(value)
    if not isinstance(value, str) or read_time(value) is None:
        raise BadInput(
            f"`{param}` {str(value)[:100]!r}: not a date; give ISO 8601 such as 2024-05-03 or "
            "2024-05-03T10:22:00Z (no zone means UTC)"
        )
    return read_time(value)


def check_range(after: datetime | None, before: datetime | None) -> None:
    """``after`` must come before ``before`` (the range is ``after <= acquired < before``)."""
    if after is not None and before is not None and not after < before:
        raise BadInput(
            f"`after` {iso_utc(after)}: must be earlier than `before` {iso_utc(before)} "
            "(the range is after <= acquired < before)"
        )
