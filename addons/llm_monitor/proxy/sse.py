"""Server-sent events, split incrementally from arbitrary chunks.

Chunks from the network may end anywhere: inside an event, between the two bytes of a
CRLF, inside a UTF-8 character. `EventSplitter` hands back whole events as the exact bytes
that made them up, so that a caller can pass them on unchanged or drop one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# SSE lines end in CRLF, LF or CR, and nothing else: str.splitlines() would also split on
# U+2028 and friends, which JSON leaves unescaped inside strings.
_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class Event:
    """One parsed event: its `event:` name (or None) and its `data:` lines joined by LF."""

    name: str | None
    data: str


class EventSplitter:
    def __init__(self) -> None:
        self._partial_line = b""
        self._event_lines: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        """Whole events completed by `chunk`, each as its raw bytes incl. the blank line."""
        lines = (self._partial_line + chunk).splitlines(keepends=True)
        self._partial_line = b""
        # A last line without its terminator is incomplete; a lone CR may be half a CRLF.
        if lines and (not lines[-1].endswith((b"\n", b"\r")) or lines[-1].endswith(b"\r")):
            self._partial_line = lines.pop()
        events = []
        for line in lines:
            if line in (b"\n", b"\r\n", b"\r"):
                if self._event_lines:
                    self._event_lines.append(line)
                    events.append(b"".join(self._event_lines))
                    self._event_lines = []
                elif events:
                    events[-1] += line  # extra blank lines travel with the event before them
                else:
                    self._event_lines.append(line)
            else:
                self._event_lines.append(line)
        return events

    def flush(self) -> bytes:
        """Whatever is left at the end of the stream: an event without its blank line."""
        rest = b"".join(self._event_lines) + self._partial_line
        self._event_lines = []
        self._partial_line = b""
        return rest


def parse_event(raw: bytes) -> Event | None:
    """The name and data of a raw event; None for an event that has no data (comments)."""
    name: str | None = None
    data: list[str] = []
    for line in _LINE_END.split(raw.decode("utf-8", errors="replace")):
        if not line or line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            data.append(value)
        elif field == "event":
            name = value
    if not data:
        return None
    return Event(name, "\n".join(data))
