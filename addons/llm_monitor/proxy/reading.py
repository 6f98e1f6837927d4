"""Reading bodies on the side, within a fixed budget of memory and time.

Every response passes through a `StreamTap`: chunks go on to the client as they arrive,
and a decoded copy goes to a reader (a provider's stream reader, or a `BodyCollector` for
a JSON body). The event loop never decodes, keeps or parses more than the limits allow:

- decoded bytes may not outgrow the compressed bytes by more than `MAX_RATIO` (after a
  first allowance; `whole_body_decode_limit` for a body read whole, a request's or a small
  JSON answer's): a compression bomb is noticed
  after a few MB, not after a GB;
- one SSE line or event, one JSON body, at most `max_read` bytes;
- a JSON body is parsed only when `budget.json_too_complex` allows it.

Past a limit the rest passes on untouched and unread; `unread` says why, and the row
records it.
"""

from __future__ import annotations

import logging
import time

from llm_monitor.proxy.content_coding import TooLarge, decoder_for, encoder_for
from llm_monitor.proxy.providers import StreamReader
from llm_monitor.proxy.sse import LineTooLong

logger = logging.getLogger(__name__)

MiB = 1024 * 1024
# Decoded bytes per compressed byte beyond which a body is a bomb (gzip'd SSE is 10-20x),
# after a first allowance: a stream's events are handled one by one in Python, so a bomb
# must stop within a few hundred KB; a JSON body is only copied, so it may reach a few MB.
MAX_RATIO = 32
STREAM_SLACK = 256 * 1024
BODY_SLACK = 4 * 1024 * 1024
# The end of a body kept when the whole is not: OpenAI ends even a 40 MB embeddings
# answer with its `"usage"`, which the OpenAI parser reads from the last 4 KB.
TAIL = 68 * 1024


def whole_body_decode_limit(encoded_size: int, max_read: int) -> int:
    """How many bytes a compressed body read whole (a request, a small JSON answer) may
    decode to before it is left unread."""
    return min(max_read, encoded_size * MAX_RATIO + BODY_SLACK)


class BodyCollector:
    """A reader for a JSON body: keeps its first `limit` decoded bytes (all of it, if it
    fits) and always its last `TAIL` bytes."""

    rewrites = False
    usage = None
    response_model = None
    error = None
    complete = False
    unread: str | None = None

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self._body: bytearray | None = bytearray()
        self._tail = b""

    def cap(self, max_read: int) -> None:
        pass  # its limit is the one it was made with

    def feed(self, data: bytes) -> bytes:
        self.size += len(data)
        if self._body is not None:
            if len(self._body) + len(data) <= self.limit:
                self._body += data
            else:
                self._tail = bytes(self._body[-TAIL:])
                self._body = None
        if self._body is None:
            self._tail = (self._tail + data)[-TAIL:]
        return data

    def finish(self) -> bytes:
        return b""

    @property
    def body(self) -> bytes | None:
        """The whole decoded body, or None when it was longer than `limit`."""
        return bytes(self._body) if self._body is not None else None

    @property
    def tail(self) -> bytes:
        return bytes(self._body[-TAIL:]) if self._body is not None else self._tail


class StreamTap:
    """`flow.response.stream`: pass each chunk on as it arrives and read it on the side.

    Never raises and never returns b"" before the end (that would end the client's
    response). When the reader rewrites (injected usage to hide), chunks are decoded,
    rewritten and encoded again with the response's own Content-Encoding.
    """

    def __init__(
        self,
        reader: StreamReader | BodyCollector,
        content_encoding: str,
        *,
        max_read: int = 16 * MiB,
        max_total: int = 1024 * MiB,
    ) -> None:
        self.reader = reader
        self.first_chunk_at: float | None = None
        self.last_chunk_at: float | None = None
        self.rewrites = reader.rewrites
        self.broken = False
        self._cut = False  # a re-encoded stream that could not be read on: nothing more
        self.unread: str | None = None  # why the rest of the body was not read
        self.max_total = max_total
        self.slack = BODY_SLACK if isinstance(reader, BodyCollector) else STREAM_SLACK
        self.received = 0  # bytes as they came (encoded)
        self.decoded = 0
        self._identity = content_encoding.strip().lower() in ("", "identity")
        self._decoder = decoder_for(content_encoding)
        self._encoder = encoder_for(content_encoding) if self.rewrites else None
        reader.cap(max_read)

    def __call__(self, chunk: bytes) -> bytes | list[bytes]:
        if not chunk:
            return self._end()
        self.last_chunk_at = time.time()
        if self.first_chunk_at is None:
            self.first_chunk_at = self.last_chunk_at
        self.received += len(chunk)
        if self._cut:
            return []
        if self.broken or self.unread is not None:
            return chunk
        try:
            data = self._decoder.decode(chunk, self._allowance(len(chunk)))
            self.decoded += len(data)
            kept = self.reader.feed(data)
            if self._encoder is None:
                return chunk
            return self._encoder.encode(kept) or []
        except (TooLarge, LineTooLong) as e:
            return self._stop_reading(str(e), chunk)
        except Exception as e:  # a corrupt encoding upstream: stop reading, keep passing on
            self.broken = True
            logger.warning("llm-monitor: cannot read stream body (%s); passing it on unread", e)
            return chunk

    def _allowance(self, size: int) -> int:
        """How many decoded bytes this chunk may add: within the total, and within
        MAX_RATIO of what was received, so that a bomb stops here."""
        by_ratio = self.received * (1 if self._identity else MAX_RATIO) + self.slack
        return max(0, min(self.max_total, by_ratio) - self.decoded)

    def _stop_reading(self, reason: str, chunk: bytes) -> bytes | list[bytes]:
        if isinstance(self.reader, BodyCollector) and self.reader.unread is None:
            self.reader.unread = reason
        self.unread = reason
        logger.warning("llm-monitor: response body passed on unread: %s", reason)
        if not self.rewrites:
            return chunk
        held = self.reader.abandon() if hasattr(self.reader, "abandon") else b""
        if self._encoder is None:
            # The bytes the reader was holding back, then this chunk as it came.
            return [held, chunk] if held else chunk
        # Re-encoded so far: the client's stream cannot switch back to the upstream's
        # encoding. Rare (the proxy asks for identity when it rewrites): cut it off.
        self._cut = True
        logger.warning("llm-monitor: a re-encoded stream was cut off: %s", reason)
        return [self._encoder.encode(held) + self._encoder.finish()]

    def _end(self) -> bytes:
        if self.broken or self.unread is not None:
            return b""
        try:
            rest = self.reader.finish()
            if self._encoder is None:
                return b""
            return self._encoder.encode(rest) + self._encoder.finish()
        except Exception as e:
            self.broken = True
            logger.warning("llm-monitor: cannot finish reading stream (%s)", e)
            return b""
