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


class LineTooLong(ValueError):
    """One line grew past the splitter's cap: the stream is not read any further."""


# Where a line ends; a lone CR at the very end of the input may be half a CRLF.
_EOL = re.compile(rb"\r\n|\r|\n")
# Where an event of LF-ended lines ends: its blank line, and any blank lines after it.
_LF_EVENT_END = re.compile(rb"\n\n+")


class EventSplitter:
    """Amortised linear: each byte is scanned a bounded number of times (for CR, for
    blank lines, for line ends), whatever the chunking, and a line is kept only up to
    `max_line` bytes (LineTooLong past that)."""

    def __init__(self, max_line: int = 16 * 1024 * 1024) -> None:
        self.max_line = max_line
        self._partial = bytearray()  # the current line, not yet ended
        self._event_lines: list[bytes] = []
        self._event_size = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        """Whole events completed by `chunk`, each as its raw bytes incl. the blank line."""
        if not self._partial and not self._event_lines and b"\r" not in chunk:
            return self._feed_lf(chunk)
        return self._feed_lines(chunk)

    def _feed_lf(self, chunk: bytes) -> list[bytes]:
        """What most chunks are: events whose lines end in LF, none begun before. Each
        ends at its blank line and takes the blank lines after it along, as `_line` has
        it, found in one scan instead of line by line; what follows the last one is held
        as `_feed_lines` holds it."""
        events: list[bytes] = []
        start = 0
        for end in _LF_EVENT_END.finditer(chunk):
            events.append(chunk[start : end.end()])
            start = end.end()
        if start < len(chunk):
            events += self._feed_lines(chunk[start:])
        return events

    def _feed_lines(self, chunk: bytes) -> list[bytes]:
        events: list[bytes] = []
        # A CR ending the last chunk may be half a CRLF: look at it again with this one.
        carry = 1 if self._partial.endswith(b"\r") else 0
        scan_from = len(self._partial) - carry
        self._partial += chunk
        data = self._partial
        start = 0  # where the current line began in `data`
        pos = scan_from
        while (match := _EOL.search(data, pos)) is not None:
            end = match.end()
            if match.group() == b"\r" and end == len(data):
                break  # maybe half a CRLF: wait for the next chunk
            self._line(bytes(data[start:end]), events)
            start = pos = end
        del data[:start]
        if len(data) > self.max_line or self._event_size > self.max_line:
            raise LineTooLong(f"an SSE line or event longer than {self.max_line} bytes")
        return events

    def _line(self, line: bytes, events: list[bytes]) -> None:
        if line in (b"\n", b"\r\n", b"\r"):
            if self._event_lines:
                self._event_lines.append(line)
                events.append(b"".join(self._event_lines))
                self._event_lines = []
                self._event_size = 0
            elif events:
                events[-1] += line  # extra blank lines travel with the event before them
            else:
                self._event_lines.append(line)
        else:
            self._event_lines.append(line)
            self._event_size += len(line)

    def flush(self) -> bytes:
        """Whatever is left at the end of the stream: an event without its blank line."""
        rest = b"".join(self._event_lines) + bytes(self._partial)
        self._event_lines = []
        self._event_size = 0
        self._partial = bytearray()
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
