"""How the dashboard's pages show numbers: USD with a dollar sign and enough significant
digits for sub-cent amounts, counts with thousands separators, percentages, milliseconds,
times in UTC. static/llm-monitor.js formats the same way in the browser (`fmt`); keep the
two in step.

A column's kind comes from its name, so that a new column of a view (or of `usage`) is
shown sensibly without a change here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

_LABELS = {
    "cost_usd": "Cost",
    "cost_usd_30d": "Cost, 30 days",
    "requests_30d": "Requests, 30 days",
    "unpriced_30d": "Unpriced, 30 days",
    "cost_share_pct": "Share of cost",
    "error_rate_pct": "Error rate",
    "change_pct": "Change",
    "avg_latency_ms": "Avg latency",
    "avg_ttft_ms": "Avg time to first token",
    "latency_ms": "Latency",
    "ttft_ms": "Time to first token",
    "ts": "Time (UTC)",
    "id": "Request",
    "priced": "Cost known",
    "unpriced_requests": "Unpriced requests",
    "is_admin": "Admin",
}
_COUNT_NAMES = {"requests", "errors", "unpriced", "orgs", "snapshots", "live_tokens"}
_FLAGS = {"streamed", "usage_injected", "billable", "revoked", "is_admin", "priced"}
_TIME_SUFFIXES = ("_at", "_seen", "_start", "_end")


def label(column: str) -> str:
    """A column's heading: `input_tokens` -> "Input tokens"."""
    if column in _LABELS:
        return _LABELS[column]
    words = column.removesuffix("_usd").removesuffix("_pct").removesuffix("_ms")
    return words.replace("_", " ").strip().capitalize()


def usd(value: float | None) -> str:
    """`$24.77`, `$1,234.50`; below a cent two significant digits (`$0.0000038`)."""
    if value is None:
        return ""
    if value == 0:
        return "$0.00"
    sign = "-" if value < 0 else ""
    amount = abs(value)
    if amount < 0.01:  # rounded first: 0.000999999 is $0.0010, not $0.00100
        amount = float(f"{amount:.2g}")
    if amount >= 0.01:
        return f"{sign}${amount:,.2f}"
    digits = 1 - math.floor(math.log10(amount))
    text = f"{amount:.{digits}f}"
    return f"{sign}${text}"


def count(value: float | None) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.1f}"
    return f"{int(value):,}"


def pct(value: float | None, *, signed: bool = False) -> str:
    if value is None:
        return ""
    return f"{value:+,.1f}%" if signed else f"{value:,.1f}%"


def ms(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:,.0f} ms" if abs(value) >= 100 else f"{value:,.1f} ms"


def utc_time(value: str | None) -> str:
    """`2026-11-23T20:15:45.542Z` -> `2026-11-23 20:15:45`."""
    if not value:
        return ""
    return value.replace("T", " ").removesuffix("Z").split(".")[0]


def kind(column: str) -> str:
    """usd, pct, change, ms, count, flag, time, json or text."""
    if column in _FLAGS:
        return "flag"
    if column == "change_pct":
        return "change"
    if "cost" in column or column.endswith("_usd"):
        return "usd"
    if column.endswith("_pct"):
        return "pct"
    if column.endswith("_ms"):
        return "ms"
    if column in _COUNT_NAMES or "tokens" in column or column.endswith(("_30d", "_requests")):
        return "count"
    if column == "ts" or column.endswith(_TIME_SUFFIXES):
        return "time"
    if column in ("tags", "raw_usage"):
        return "json"
    return "text"


_NUMERIC = {"usd", "count", "pct", "change", "ms"}


def numeric(column: str) -> bool:
    """Whether a column holds numbers to right-align (its heading too)."""
    return kind(column) in _NUMERIC or column in ("current", "previous")


# In `summary`, the kind of `current` and `previous` is the row's metric's.
_BY_METRIC = {"current", "previous"}


@dataclass(frozen=True)
class Cell:
    text: str
    kind: str
    numeric: bool
    title: str = ""


def cell(column: str, value: Any, row: Any = None) -> Cell:
    """One table cell, formatted for reading; `numeric` cells are right-aligned."""
    how = kind(column)
    # A sqlite3.Row: `in` would look at its values, not its columns.
    if column in _BY_METRIC and row is not None and "metric" in row.keys():  # noqa: SIM118
        how = kind(row["metric"])
        if how == "text":
            how = "count"
    if value is None:
        title = "unknown: left out of costs" if how == "usd" else ""
        return Cell("—" if how == "usd" else "", how, how in _NUMERIC, title)
    if how == "usd" and isinstance(value, int | float):
        return Cell(usd(value), how, True, f"{value:.10g} USD")
    if how in ("count", "pct", "change", "ms") and isinstance(value, int | float):
        text = {
            "count": count,
            "pct": pct,
            "change": lambda v: pct(v, signed=True),
            "ms": ms,
        }[how](value)
        return Cell(text, how, True)
    if how == "flag":
        return Cell({1: "yes", 0: "no"}.get(value, str(value)), how, False)
    if how == "time" and isinstance(value, str):
        return Cell(utc_time(value), how, False, value)
    if how == "json" and isinstance(value, str):
        try:
            return Cell(json.dumps(json.loads(value), indent=1), how, False)
        except ValueError:
            return Cell(value, how, False)
    return Cell(str(value), how, isinstance(value, int | float) and how != "text")
