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
