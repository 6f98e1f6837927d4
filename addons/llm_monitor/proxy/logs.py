"""Log lines as JSON objects (`--set monitor_log_json=true`), for a log shipper.

The formatter goes on the handlers that print (mitmproxy's TermLog), after the inert
filter has redacted and escaped the message. A record's `fields` (set with
`extra={"fields": {...}}`) are added as keys: the addon's request and rejection lines carry
them, so a shipper need not parse the text.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

FIELDS = "fields"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, FIELDS, None) or {})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


_saved: dict[int, logging.Formatter | None] = {}


def use_json(enabled: bool) -> None:
    """Switch every handler of the root logger to JSON lines, or back."""
    for handler in logging.getLogger().handlers:
        if enabled and not isinstance(handler.formatter, JsonFormatter):
            _saved[id(handler)] = handler.formatter
            handler.setFormatter(JsonFormatter())
        elif not enabled and isinstance(handler.formatter, JsonFormatter):
            handler.setFormatter(_saved.pop(id(handler), None))


class Throttle:
    """At most `per_second` lines a second: a flood of refused requests (a client retrying
    against a rate limit, a scan) must not fill the log, nor hold the event loop writing
    it. What is held back is counted, and said by the next line let through."""

    def __init__(self, per_second: int = 20, clock: Callable[[], float] = time.monotonic):
        self.per_second = per_second
        self.clock = clock
        self._second = -1
        self._lines = 0
        self.held = 0  # held back since the last line let through

    def allow(self) -> bool:
        second = int(self.clock())
        if second != self._second:
            self._second, self._lines = second, 0
        if self._lines >= self.per_second:
            self.held += 1
            return False
        self._lines += 1
        return True

    def take_held(self) -> int:
        """How many lines were held back before this one (and start counting anew)."""
        held, self.held = self.held, 0
        return held
