"""Calendar windows (UTC) a budget or a rate limit counts in, and the clock they are read
by. The clock can be moved by `LLM_MONITOR_CLOCK_OFFSET` seconds, for tests that cross a
boundary without waiting for it."""

from __future__ import annotations

import datetime as dt
import os
import time
from dataclasses import dataclass

from llm_monitor.errors import Invalid

PERIODS = ("day", "week", "month", "range")
CLOCK_OFFSET_ENV = "LLM_MONITOR_CLOCK_OFFSET"


def clock_offset() -> float:
    value = os.environ.get(CLOCK_OFFSET_ENV, "").strip()
    try:
        return float(value) if value else 0.0
    except ValueError:
        return 0.0


def now() -> dt.datetime:
    return dt.datetime.fromtimestamp(time.time() + clock_offset(), dt.UTC)


@dataclass(frozen=True, slots=True)
class Window:
    key: str  # names the window in leases and alerts: 2026-12-01, 2026-W49, 2026-12
    start: dt.datetime
    end: dt.datetime  # exclusive: when the budget resets

    @property
    def start_ts(self) -> str:
        return usage_ts(self.start)

    @property
    def end_ts(self) -> str:
        return usage_ts(self.end)


def usage_ts(when: dt.datetime) -> str:
    """The form of `usage.ts`, so that windows compare as text."""
    return when.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(0), dt.UTC)


def window_of(
    period: str, at: dt.datetime, starts_on: str | None = None, ends_on: str | None = None
) -> Window | None:
    """The window of `period` holding `at`; None for a date range `at` is outside of."""
    day = at.date()
    if period == "day":
        return Window(day.isoformat(), _midnight(day), _midnight(day + dt.timedelta(days=1)))
    if period == "week":
        monday = day - dt.timedelta(days=day.weekday())
        year, week, _ = monday.isocalendar()
        start = _midnight(monday)
        return Window(f"{year}-W{week:02d}", start, start + dt.timedelta(days=7))
    if period == "month":
        first = day.replace(day=1)
        following = (first + dt.timedelta(days=32)).replace(day=1)
        return Window(f"{first:%Y-%m}", _midnight(first), _midnight(following))
    if period == "range":
        assert starts_on is not None and ends_on is not None
        first, last = dt.date.fromisoformat(starts_on), dt.date.fromisoformat(ends_on)
        if not first <= day <= last:
            return None
        return Window(
            f"{starts_on}..{ends_on}", _midnight(first), _midnight(last + dt.timedelta(days=1))
        )
    if period == "minute":
        start = at.replace(second=0, microsecond=0)
        return Window(f"{start:%Y-%m-%dT%H:%M}", start, start + dt.timedelta(minutes=1))
    raise Invalid(f"unknown period {period!r} (day, week, month or a date range)")


def parse_range(value: str) -> tuple[str, str]:
    """`2026-01-01..2026-03-31` (both days included) as two ISO dates."""
    first, sep, last = value.partition("..")
    try:
        start, end = dt.date.fromisoformat(first.strip()), dt.date.fromisoformat(last.strip())
    except ValueError:
        start = end = None
    if not sep or start is None or end is None or end < start:
        raise Invalid(f"a date range is FIRST..LAST, e.g. 2026-01-01..2026-03-31; got {value!r}")
    return start.isoformat(), end.isoformat()
