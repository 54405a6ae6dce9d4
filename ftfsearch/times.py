"""Acquisition times: one parser for dates the user gives and dates found in imagery metadata.

Every time is stored and compared as ISO 8601 in UTC (``2024-05-03T10:22:11Z``), the form
Qdrant's datetime index parses. A time without a zone is taken as UTC: TIFF date tags carry
none, and satellite metadata is UTC by convention.
"""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class TimeRange:
    """An ISO 8601 interval ``START/END`` as STAC writes ``datetime`` ranges; ``..`` leaves an end
    open. Holds ``start <= acquired < end``, as ``after``/``before`` do, so adjacent ranges
    (``2019/2020``, ``2020/2021``) do not overlap."""

    start: datetime | None
    end: datetime | None

    def __str__(self) -> str:
        return f"{'..' if self.start is None else iso_utc(self.start)}/{'..' if self.end is None else iso_utc(self.end)}"

    def holds(self, when: datetime) -> bool:
        return (self.start is None or self.start <= when) and (self.end is None or when < self.end)

    def overlaps(self, other: "TimeRange") -> bool:
        starts_before_other_ends = self.start is None or other.end is None or self.start < other.end
        ends_after_other_starts = self.end is None or other.start is None or other.start < self.end
        return starts_before_other_ends and ends_after_other_starts


def parse_range(value: "str | TimeRange", param: str) -> TimeRange:
    """``START/END`` (``2019-01-01/2020-01-01``, ``../2015``, ``2021-06/..``) as a :class:`TimeRange`;
    a :class:`BadInput` naming ``param`` for anything else, an empty range, or ``../..``."""
    if isinstance(value, TimeRange):
        return value
    text = str(value).strip()
    parts = text.split("/")
    if len(parts) != 2:
        raise BadInput(f"`{param}` {text[:100]!r}: not a range; give START/END in ISO 8601, either end '..' "
                       "(such as 2019-01-01/2020-01-01 or 2021-06-01/..)")
    ends = [None if p.strip() in ("", "..") else parse_time(p.strip(), param) for p in parts]
    if ends[0] is None and ends[1] is None:
        raise BadInput(f"`{param}` {text!r}: both ends are open; give at least one date")
    out = TimeRange(ends[0], ends[1])
    if out.start is not None and out.end is not None and not out.start < out.end:
        raise BadInput(f"`{param}` {text!r}: is empty (START must be earlier than END; END is excluded)")
    return out


def check_ranges(before: TimeRange, after: TimeRange) -> None:
    """Two ranges compared (``change --before --after``): disjoint, and ``before`` the earlier."""
    if before.overlaps(after):
        raise BadInput(f"`before` {before} and `after` {after}: overlap; give two ranges that share no time")
    if after.end is not None and before.start is not None and after.end <= before.start:
        raise BadInput(f"`before` {before}: comes after `after` {after}; swap them")
