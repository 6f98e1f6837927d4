"""The small interface every provider module implements.

A provider knows three things the proxy does not: what a request asks for (model, stream,
and whether usage must be asked for), where usage sits in its responses, and how its
errors look. Everything else (auth, timing, recording) is the same for all of them.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import msgspec
import orjson
from mitmproxy import http

from llm_monitor.proxy.budget import json_too_complex
from llm_monitor.proxy.sse import EventSplitter
from llm_monitor.usage import TokenUsage

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class RequestInfo:
    """What the proxy learnt from a request body before forwarding it."""

    model: str | None = None
    streamed: bool = False
    usage_injected: bool = False
    billable: bool = True  # False for calls the provider does not charge for (count_tokens)
    # The most output the request allows (max_tokens times the number of choices), when it
    # says: what a hard budget reserves for it.
    max_output: int | None = None
    # The body as the client sent it, when the proxy changed it (usage injection): sent
    # again unchanged if the provider refuses the changed one.
    unchanged_body: bytes | None = None
    # The request offered OpenAI's `web_search_preview` tool: its searches are billed at a
    # rate of their own, not `web_search`'s.
    web_search_preview: bool = False


class StreamReader(Protocol):
    """Reads usage out of a decoded streamed body as it passes.

    `feed` returns the decoded bytes to pass on: the input itself unless `rewrites` is
    true, in which case it may hold back a partial event or drop one.
    """

    rewrites: bool
    usage: TokenUsage | None
    response_model: str | None
    error: str | None
    complete: bool  # the provider's last event was seen: nothing after it matters

    def feed(self, data: bytes) -> bytes: ...

    def finish(self) -> bytes: ...

    def cap(self, max_read: int) -> None:
        """Keep at most `max_read` decoded bytes of one event or element."""


class Provider(Protocol):
    name: str

    def inspect_request(
        self, request: http.Request, headers: Mapping[str, str], *, inject_usage: bool
    ) -> RequestInfo:
        """What the request asks for. Its body (`raw_content`) is as it goes on: the addon
        has decoded a compressed one already, or left it empty when it does not read it.
        `headers` are those of its headers named in `READ_HEADERS`, as they go on
        (lower-case names, as `take_our_headers` gives them): mitmproxy's own look-ups cost
        more, and this runs for every request."""
        ...

    def usage_from_body(
        self, body: bytes, info: RequestInfo
    ) -> tuple[TokenUsage | None, str | None]:
        """Usage and the answering model from a whole (decoded) JSON response body."""
        ...

    def error_code(self, body: bytes) -> str | None: ...

    def stream_reader(self, info: RequestInfo, content_type: str) -> StreamReader | None:
        """A reader for a successful response to stream through, or None to buffer it."""
        ...

    def rejection(self, status: int, message: str, code: str) -> bytes:
        """A JSON error body in this provider's own shape, so its SDK shows `message`."""
        ...

    def key_hint(self, headers: Mapping[str, str]) -> str | None:
        """The request's provider key in the form the provider's console shows it, or None."""
        ...


# The request headers that providers and the addon read from `headers`: only these are
# decoded for them, once a request (a request carries a dozen more: the user agent, an
# SDK's telemetry). A provider that reads another one adds it here.
READ_HEADERS = frozenset(
    {"authorization", "x-api-key", "content-type", "content-length", "content-encoding"}
)


def bearer_token(headers: Mapping[str, str]) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def count_field(body: dict[str, Any], *names: str) -> int | None:
    """The first of `names` in `body` that holds a non-negative integer."""
    for name in names:
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def load_json(body: bytes) -> Any:
    """Parsed JSON, or None for anything that is not valid JSON.

    orjson first (a third of the time of `json.loads`, for every body and stream event
    read); what it refuses and the standard library takes (NaN, Infinity, lone surrogates,
    nesting past 1024) is parsed by `json.loads`. One difference stays: an integer beyond
    64 bits comes back as a float, which no count accepts (`usage.as_count`), as none
    accepts the integer either.
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return _standard_json(body)


def load_json_for_rewrite(body: bytes) -> tuple[Any, bool]:
    """`load_json`, and whether orjson read the body. A body the proxy changes and sends
    on (usage injection) is written by orjson only then (`json_bytes(fast=...)`: 9 against
    105 µs for a 50 KB conversation): orjson refuses NaN and Infinity, which it would write
    as null, so a value it read holds neither. (Looking for them in the body's bytes
    instead took 52 µs for those 50 KB.)"""
    try:
        return orjson.loads(body), True
    except orjson.JSONDecodeError:
        return _standard_json(body), False


class TopLevelFields:
    """Reads the named top-level fields of a JSON object request body, and only them.

    A request carries the conversation so far, most of its bytes; what the proxy reads
    from it (the model, the stream flag, the output limit) sits at the top. msgspec
    decodes the named fields and steps over everything else without building it: 3 against
    orjson's 9 µs for a 10 KB conversation, 12 against 43 µs for 50 KB (less CPU a request
    by 1.4% and 4.6%: `scripts/benchmark.py compare --prompt-kb N`).

    Returns every named field (None for one that is absent or null), or None for a body
    that is not a JSON object. What msgspec refuses (NaN, Infinity, a lone surrogate in a
    field it reads, deep nesting, raised as a RecursionError) goes to `load_json`, which
    reads it as before.
    The one difference: a string stepped over is not checked for valid UTF-8, so the
    fields of a body holding bad UTF-8 in a message are read, where a whole parse read
    none; the provider refuses such a body, and its row says so (status and error).
    """

    def __init__(self, *names: str) -> None:
        self.names = names
        fields = msgspec.defstruct("TopLevelFields", [(n, Any, None) for n in names], gc=False)
        self._decoder = msgspec.json.Decoder(fields)

    def __call__(self, body: bytes) -> dict[str, Any] | None:
        try:
            return msgspec.structs.asdict(self._decoder.decode(body))
        except (msgspec.MsgspecError, RecursionError):  # not an object, or not for msgspec
            value = load_json(body)
            if not isinstance(value, dict):
                return None
            return {name: value.get(name) for name in self.names}


_EMPTY_REST = re.compile(rb"[ \t\r\n]*\}")  # what follows the `{` of an empty object


class FieldAdder:
    """Adds a member to a JSON object body that lacks it, as the first member, leaving
    every byte the client sent as it was: no parse of the whole body and no writing of it
    again (15 against 74 µs for a 50 KB conversation, most of it msgspec checking that the
    member is absent), and numbers, escapes and key order forwarded exactly.

    Gives None when the body is not a JSON object in UTF-8 (as msgspec reads it), or has
    the member already, in any spelling: the caller rewrites it whole."""

    def __init__(self, name: str, value: Any) -> None:
        presence = msgspec.defstruct("Presence", [(name, Any, msgspec.UNSET)], gc=False)
        self._decoder = msgspec.json.Decoder(presence)
        self._name = name
        self._member = msgspec.json.encode({name: value})[1:-1] + b","

    def __call__(self, body: bytes) -> bytes | None:
        try:
            found = self._decoder.decode(body)
        except (msgspec.MsgspecError, RecursionError):
            return None
        if getattr(found, self._name) is not msgspec.UNSET:
            return None
        if not body.isascii():  # msgspec steps over strings without checking their UTF-8
            try:
                body.decode()
            except UnicodeDecodeError:
                return None
        brace = body.index(b"{") + 1  # only JSON whitespace comes before it
        member = self._member[:-1] if _EMPTY_REST.match(body, brace) else self._member
        return body[:brace] + member + body[brace:]


def _standard_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


class SSEReader:
    """Shared SSE plumbing: split into events, hand each to `on_event`, keep what it keeps."""

    rewrites: ClassVar[bool] = False

    def __init__(self) -> None:
        self.usage: TokenUsage | None = None
        self.response_model: str | None = None
        self.error: str | None = None
        self.complete = False
        self.unread: str | None = None  # why an event was passed on without being read
        self._splitter = EventSplitter()

    def on_event(self, raw: bytes) -> bytes:
        """Inspect one raw event (`parse_event` reads it); return the bytes to pass on in its
        place (b"" drops it)."""
        raise NotImplementedError

    def cap(self, max_read: int) -> None:
        self._splitter.max_line = max_read

    def feed(self, data: bytes) -> bytes:
        events = self._splitter.feed(data)
        if self.rewrites:
            return b"".join(self._read(raw) for raw in events)
        for raw in events:
            self._read(raw)
        return data

    def finish(self) -> bytes:
        rest = self._splitter.flush()
        rest = self._read(rest) if rest else rest
        return rest if self.rewrites else b""

    def abandon(self) -> bytes:
        """The bytes held back, for a stream that is no longer read (see StreamTap)."""
        rest = self._splitter.flush()
        return rest if self.rewrites else b""

    def _read(self, raw: bytes) -> bytes:
        """One event through `on_event`; an event it cannot read is passed on as it came."""
        if (reason := json_too_complex(raw)) is not None:
            self.unread = reason
            return raw
        try:
            return self.on_event(raw)
        except Exception as e:
            logger.warning("llm-monitor: unreadable stream event passed on as is (%r)", e)
            return raw
