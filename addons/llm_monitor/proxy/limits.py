"""Limits mitmproxy does not enforce itself, applied where it reads from the client.

mitmproxy 12 buffers a request head of any size ("FIXME: protect against header size DoS"
in its HTTP/1 server) and, once an addon has answered a request from its headers, still
reads and keeps its whole body before sending that answer. Two small wrappers close those
gaps; the addon decides everything else through plain values:

- `Http1Server.read_headers`: a head still incomplete past `settings.max_header_bytes` (431),
  and a head mitmproxy cannot parse (a bad request line, a bad header line, a bad
  Content-Length: its HTML 400, made by `make_error_response`, which is wrapped too), are
  answered with `settings.head_refusal(client, status, reason, detail)` and the connection
  closed; no flow is made for them. (A head that
  arrives whole is measured by the addon's `requestheaders`.) HTTP/2 in clear text (the
  prior-knowledge preface, which mitmproxy does not serve) gets an HTTP/2 GOAWAY with
  HTTP_1_1_REQUIRED instead of being read as a request named `PRI`.
- `HttpStream.state_consume_request_body`: a flow carrying a `BodyLimit` in its metadata
  keeps at most `limit` bytes of body; past that, or once the addon has answered from the
  headers (an `Answered` in its place), the body is read and dropped (never kept, never
  forwarded), and the answer goes out when the body ends. A client that sends more than
  `drain` bytes after being answered is cut off with a 413.

- `Http1Server.send` and `Http2Server._handle_event`: mitmproxy's own error page for a flow
  it could not complete (the provider unreachable, a TLS failure, a request it refused) is
  `settings.error_response(client, status, message)` instead, the listener's provider's
  JSON error, when that gives one. mitmproxy sends these pages itself, after the `error`
  hook and whatever the hook set, so no hook can replace them.
- `ConnectionHandler.on_timeout`: before mitmproxy closes a connection idle past
  `tcp_timeout`, `settings.timeout_response(client)` may give an answer to send first (a
  504 for a request the provider never answered). An HTTP/2 connection's provider
  connections are closed first, so that each waiting stream gets its 504 through
  `Http2Server._handle_event`.

`install()` applies them once per process; `test_hostile.py` and `test_production_errors.py`
fail if a mitmproxy upgrade moves what they wrap.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import h2.config
import h2.connection
import h2.errors
from mitmproxy import flow as mflow
from mitmproxy import http
from mitmproxy.connection import Client, ConnectionState
from mitmproxy.net.http import http1
from mitmproxy.proxy import commands, events
from mitmproxy.proxy.layers.http import HttpStream, SendHttp, _http1
from mitmproxy.proxy.layers.http._events import ErrorCode, RequestData, ResponseProtocolError
from mitmproxy.proxy.layers.http._hooks import HttpErrorHook
from mitmproxy.proxy.layers.http._http1 import Http1Server
from mitmproxy.proxy.layers.http._http2 import Http2Server
from mitmproxy.proxy.server import ConnectionHandler

GUARD_KEY = "llm_monitor_body_guard"
_HEAD_END = re.compile(rb"\n\r?\n")


@dataclass(frozen=True, slots=True)
class BodyLimit:
    """How much of a request's body may be kept, and the answer when it is too much. One
    serves every flow (made per request, it cost about a microsecond of each); a flow that
    gets answered before its body is read carries an `Answered` in its place."""

    limit: int  # bytes of body that may be buffered
    drain: int  # bytes read and dropped after answering, before the client is cut off
    # The answer once the body passes `limit`, for the flow: one callable for all flows, so
    # that no closure per flow ties the flow to itself.
    too_large: Callable[[http.HTTPFlow], http.Response]


@dataclass(slots=True)
class Answered:
    """A flow answered before its body was read: the body is read and dropped (never kept,
    never forwarded) and the client cut off once more than `drain` bytes of it came."""

    drain: int
    dropped: int = 0


def _default_refusal(client: Client, status: int, reason: str, detail: str) -> http.Response:
    return http.Response.make(status, detail.encode(), {"content-type": "text/plain"})


def _no_response(*_: object) -> None:
    return None


@dataclass(slots=True)
class Settings:
    max_header_bytes: int = 64 * 1024
    # The answer to a request head refused before it makes a flow, for (client, status,
    # reason, detail): 431 `request_headers_too_large`, 400 `malformed_request`. Whoever
    # gives it logs and counts the refusal: no hook runs for it.
    head_refusal: Callable[[Client, int, str, str], http.Response] = _default_refusal
    # The answer to send instead of mitmproxy's error page for (client, status, message),
    # or None for mitmproxy's own page.
    error_response: Callable[[Client, int, str], http.Response | None] = _no_response
    # The response to send on a connection closed for inactivity, or None.
    timeout_response: Callable[[Any], http.Response | None] = _no_response


settings = Settings()
_installed = False


def install() -> None:
    """Wrap the mitmproxy methods (once per process; later calls do nothing)."""
    global _installed
    if _installed:
        return
    _installed = True
    read_headers = Http1Server.read_headers
    consume_body = HttpStream.state_consume_request_body
    send = Http1Server.send
    h2_handle_event = Http2Server._handle_event
    on_timeout = ConnectionHandler.on_timeout
    _http1.make_error_response = _error_page

    # The wrappers are plain functions that return a generator: they run for every event
    # of every request, and an extra generator frame around mitmproxy's own would cost.
    def shaped_send(self: Http1Server, event: Any) -> Any:
        global _reading
        if (
            isinstance(event, ResponseProtocolError)
            and not self.response
            and self.conn.state & ConnectionState.CAN_WRITE
            and (response := _shaped_error(self.context.client, event)) is not None
        ):
            return _send_error(self, response)
        _reading = None  # mitmproxy's page, if it makes one here, is its own
        return send(self, event)

    def shaped_h2_event(self: Http2Server, event: Any) -> Any:
        if (
            isinstance(event, ResponseProtocolError)
            and self.is_open_for_us(event.stream_id)
            and not self.h2_conn.streams[event.stream_id].state_machine.headers_sent
            and (response := _shaped_error(self.context.client, event)) is not None
            and len(response.content or b"")
            <= self.h2_conn.local_flow_control_window(event.stream_id)
        ):
            return _send_h2_error(self, event.stream_id, response)
        return h2_handle_event(self, event)

    async def answered_timeout(self: ConnectionHandler) -> None:
        io = self.transports.get(self.client)
        if io is not None and self.client.alpn == b"h2":
            await _time_out_streams(self)
            await on_timeout(self)
            return
        response = settings.timeout_response(self.client) if io is not None else None
        if response is not None and io.writer is not None:
            response.headers["connection"] = "close"
            with contextlib.suppress(Exception):
                io.writer.write(http1.assemble_response(response))
        await on_timeout(self)

    def limited_read_headers(self: Http1Server, event: events.Event) -> Any:
        global _reading
        if isinstance(event, events.DataReceived):
            if (
                len(self.buf) > settings.max_header_bytes
                and _HEAD_END.search(bytes(self.buf), 0, settings.max_header_bytes + 2) is None
            ):
                detail = f"Request headers larger than {settings.max_header_bytes // 1024} KB"
                return _refuse_head(self, 431, "request_headers_too_large", detail)
            # A head starting with this read (clients send the preface in one write).
            if event.data.startswith(_H2_PREFACE) and len(self.buf) == len(event.data):
                return _refuse_h2c(self)
        _reading = self  # for `_error_page`: mitmproxy parses the head as it starts
        return read_headers(self, event)

    def guarded_consume_body(self: HttpStream, event: events.Event) -> Any:
        guard: BodyLimit | Answered | None = self.flow.metadata.get(GUARD_KEY)
        if guard is not None and isinstance(event, RequestData):
            if type(guard) is BodyLimit:
                if len(self.request_body_buf) + len(event.data) <= guard.limit:
                    return consume_body(self, event)
                self.flow.response = guard.too_large(self.flow)
                guard = self.flow.metadata[GUARD_KEY] = Answered(
                    guard.drain, len(self.request_body_buf)
                )
                self.request_body_buf.clear()
            assert isinstance(guard, Answered)
            guard.dropped += len(event.data)
            return _cut_off(self) if guard.dropped > guard.drain else _nothing()
        return consume_body(self, event)

    Http1Server.read_headers = limited_read_headers  # type: ignore[method-assign]
    HttpStream.state_consume_request_body = guarded_consume_body  # type: ignore[method-assign]
    Http1Server.send = shaped_send  # type: ignore[method-assign]
    Http2Server._handle_event = shaped_h2_event  # type: ignore[method-assign]
    ConnectionHandler.on_timeout = answered_timeout  # type: ignore[method-assign]


def _send_error(server: Http1Server, response: http.Response) -> Any:
    response.headers["connection"] = "close"
    yield commands.SendData(server.conn, http1.assemble_response(response))
    yield commands.CloseConnection(server.conn)


def _send_h2_error(server: Http2Server, stream_id: int, response: http.Response) -> Any:
    """What mitmproxy does for its HTML page on an HTTP/2 stream, with `response`."""
    head = [(b":status", b"%d" % response.status_code)]
    head += [(k.lower(), v) for k, v in response.headers.fields]
    server.h2_conn.send_headers(stream_id, head)
    server.h2_conn.send_data(stream_id, response.content or b"", end_stream=True)
    yield commands.SendData(server.conn, server.h2_conn.data_to_send())


def _nothing() -> Any:
    yield from ()


# The HTTP/1 server whose head mitmproxy is reading: `Http1Server.read_headers` makes its
# HTML 400 (`make_error_response`) in its first step, which runs as soon as the wrapper
# returns, before any other connection's; `Http1Server.send`'s wrapper clears it first.
_reading: Http1Server | None = None
_make_error_response = _http1.make_error_response


def _error_page(status_code: int, message: str = "") -> bytes:
    """mitmproxy's error page, or for a head it could not parse (a bad request line, a bad
    header line, a bad Content-Length) `settings.head_refusal`'s 400. The half-read
    request is forgotten, so mitmproxy makes no flow of it (no hook of ours sees it)."""
    global _reading
    server, _reading = _reading, None
    if server is None or status_code != 400:
        return _make_error_response(status_code, message)
    response = settings.head_refusal(server.context.client, 400, "malformed_request", message)
    response.headers["connection"] = "close"
    server.request = None
    return http1.assemble_response(response)


def _shaped_error(client: Client, event: ResponseProtocolError) -> http.Response | None:
    status = event.code.http_status_code()
    if status is None:
        return None
    message = event.message
    if status == 502 and (seconds := _timed_out.get(client.id)) is not None:
        message = f"The provider did not answer within {seconds} s (timed out)."
    return settings.error_response(client, status, message)


# HTTP/2 clients whose connection is being closed for inactivity, and `tcp_timeout`.
_timed_out: dict[str, int] = {}


async def _time_out_streams(handler: ConnectionHandler) -> None:
    """An HTTP/2 connection idle past `tcp_timeout`: close its provider connections first,
    the way mitmproxy handles a provider that hangs up, so that each stream still waiting
    for its answer gets one (a 504, see `_shaped_error`) before the client's connection
    is closed. (For HTTP/1, `settings.timeout_response` writes the answer.)"""
    client = handler.client
    tasks = [
        io.handler
        for conn, io in handler.transports.items()
        if conn is not client and io.handler is not None and not io.handler.done()
    ]
    if not tasks:
        return
    _timed_out[client.id] = handler.timeout_watchdog.timeout
    try:
        for task in tasks:
            task.cancel("timeout")
        await asyncio.wait(tasks, timeout=1)
    finally:
        _timed_out.pop(client.id, None)


def _refuse_head(server: Http1Server, status: int, reason: str, detail: str) -> Any:
    response = settings.head_refusal(server.context.client, status, reason, detail)
    response.headers["connection"] = "close"
    server.buf = type(server.buf)()  # drop what was read
    yield commands.SendData(server.conn, http1.assemble_response(response))
    yield commands.CloseConnection(server.conn)
    server.state = server.done


_H2_PREFACE = b"PRI * HTTP/2.0\r\n"


def _refuse_h2c(server: Http1Server) -> Any:
    """HTTP/2 in clear text (prior knowledge), which mitmproxy does not serve: an HTTP/2
    GOAWAY with HTTP_1_1_REQUIRED, which an HTTP/2 client can read (an HTTP/1 answer it
    could not), logged and counted through `head_refusal` (whose answer is not sent)."""
    detail = "HTTP/2 without TLS (h2c) is not served: use HTTP/1.1, or HTTP/2 over TLS"
    settings.head_refusal(server.context.client, 505, "http2_cleartext", detail)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    conn.initiate_connection()
    conn.close_connection(h2.errors.ErrorCodes.HTTP_1_1_REQUIRED, detail.encode())
    server.buf = type(server.buf)()
    yield commands.SendData(server.conn, conn.data_to_send())
    # Only our side: a full close with the client's frames still unread would reset the
    # connection before the client reads the GOAWAY. What it sends next is dropped.
    yield commands.CloseTcpConnection(server.conn, half_close=True)
    server.state = server.done


def _cut_off(stream: HttpStream) -> Any:
    """The client kept sending after its answer: 413 and close, as mitmproxy's own
    body_size_limit does."""
    message = "Request body too large; the rest was not read (LLM Monitor)."
    stream.flow.error = mflow.Error(message)
    yield HttpErrorHook(stream.flow)
    yield SendHttp(
        ResponseProtocolError(stream.stream_id, message, ErrorCode.REQUEST_TOO_LARGE),
        stream.context.client,
    )
    stream.client_state = stream.state_errored
    stream.flow.live = False


def raise_backlog(servers: Any, backlog: int) -> int:
    """listen() again on every listening TCP socket of mitmproxy's servers with a longer
    queue (asyncio's start_server uses 100); returns how many sockets. Linux takes the
    new length at once, up to net.core.somaxconn."""
    count = 0
    for instance in servers:
        for server in getattr(instance, "_servers", []):
            for sock in getattr(server, "sockets", ()):
                if sock.type != socket.SOCK_STREAM:
                    continue
                with socket.socket(fileno=socket.dup(sock.fileno())) as dup:
                    dup.listen(backlog)
                count += 1
    return count
