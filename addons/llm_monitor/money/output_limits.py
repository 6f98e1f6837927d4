"""The most output tokens a model may return: what a hard budget reserves for a request
that sets no `max_tokens` (its worst case).

From the shipped `pricing/output_limits.json` (limits stated in providers' documentation,
each with its source); else the caller's default (`monitor_default_max_output`), or the
price library's context window when that is smaller, since no output can exceed it. A
context window itself is no bound to reserve: a million tokens would make every request
without `max_tokens` outgrow a tokens-per-minute limit, and a small budget, at once.
"""

from __future__ import annotations

import functools
import json
import re

from llm_monitor.money.library import library_index
from llm_monitor.money.prices import OUTPUT_LIMITS_FILE, SHIPPED_PRICES


@functools.cache
def shipped_output_limits() -> dict[tuple[str, str], int]:
    """(provider, model id or family) -> max output tokens, from the shipped file."""
    document = json.loads((SHIPPED_PRICES / OUTPUT_LIMITS_FILE).read_text(encoding="utf-8"))
    limits = {}
    for entry in document["limits"]:
        tokens = entry["max_output_tokens"]
        if not (isinstance(tokens, int) and tokens > 0 and entry.get("source")):
            raise ValueError(f"{OUTPUT_LIMITS_FILE}: a bad entry {entry!r}")
        limits[entry["provider"], entry["model"].lower()] = tokens
    return limits


# A snapshot's or version's suffix to a model id: -20250929, @20251001, -2024-08-06,
# -001, -latest. Nothing else is cut: claude-sonnet-5-5 is not claude-sonnet-5.
_SNAPSHOT = re.compile(r"(?:[-@]\d{8}|-\d{4}-\d{2}-\d{2}|-\d{3}|-latest)$")


def _shipped(provider: str, model: str) -> int | None:
    """The entry for `model`, or for it without its snapshot suffix."""
    limits = shipped_output_limits()
    name = model.lower().removeprefix("models/")
    found = limits.get((provider, name))
    if found is None:
        found = limits.get((provider, _SNAPSHOT.sub("", name)))
    return found


def output_limit(provider: str, model: str, default: int) -> int:
    """The output tokens to reserve for a request to `model` that sets no limit."""
    shipped = _shipped(provider, model)
    if shipped is not None:
        return shipped
    window = library_index().context_window(provider, model)
    return window if window is not None and window < default else default
