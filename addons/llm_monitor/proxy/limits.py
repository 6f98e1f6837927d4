"""Limits mitmproxy does not enforce itself, applied where it reads from the client.

mitmproxy 12 buffers a request head of any size ("FIXME: protect against header size DoS"
in its HTTP/1 server) and, once an addon has answered a request from its headers, still
reads and keeps its whole body before sending that answer. Two small wrappers close those
gaps; the addon decides everything else through plain values:

- `Http1Server.read_headers`: a head still incomplete past `settings.max_header_bytes` is
  answered with `settings.header_rejection(proxy_mode)` and its connection closed. (A head
  that arrives whole is measured by the addon's `requestheaders`.)
- `HttpStream.state_consume_request_body`: a flow carrying a `BodyGuard` in its metadata
  keeps at most `limit` bytes of body; past that, or once the addon has answered from the
  headers, the body is read and dropped (never kept, never forwarded), and the answer goes
  out when the body ends. A client that sends more than `drain` bytes after being answered
  is cut off with a 413.

- `Http1Server.send`: mitmproxy's own error page for a flow it could not complete (the
  provider unreachable, a TLS failure, a request it refused) is `settings.error_response(
  proxy_mode, status, message)` instead, the listener's provider's JSON error, when that
  gives one.
- `ConnectionHandler.on_timeout`: before mitmproxy closes a connection idle past
  `tcp_timeout`, `settings.timeout_response(client)` may give an answer to send first (a
  504 for a request the provider never answered).

`install()` applies them once per process; `test_hostile.py` fails if a mitmproxy upgrade
moves what they wrap.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mitmproxy import flow as mflow
from mitmproxy import http
from mitmproxy.connection import ConnectionState
from mitmproxy.net.http import http1
from mitmproxy.proxy import commands, events
from mitmproxy.proxy.layers.http import HttpStream, SendHttp
from mitmproxy.proxy.layers.http._events import ErrorCode, RequestData, ResponseProtocolError
from mitmproxy.proxy.layers.http._hooks import HttpErrorHook
from mitmproxy.proxy.layers.http._http1 import Http1Server
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.proxy.server import ConnectionHandler

logger = logging.getLogger(__name__)

GUARD_KEY = "llm_monitor_body_guard"
_HEAD_END = re.compile(rb"\n\r?\n")


@dataclass(slots=True)
class BodyGuard:
    """How much of one request's body may be kept, and the answer when it is too much."""

    limit: int  # bytes of body that may be buffered
    drain: int  # bytes read and dropped after answering, before the client is cut off
    too_large: Callable[[], http.Response]  # the answer once the body passes `limit`
    answered: bool = False  # an answer is set: the body is dropped, never forwarded
    dropped: int = 0
    over_limit: bool = False  # the answer is `too_large`'s


def _default_rejection(mode: ProxyMode) -> bytes:
    return b"Request header fields too large."


def _no_response(*_: object) -> None:
    return None


@dataclass(slots=True)
class Settings:
    max_header_bytes: int = 64 * 1024
    # The body of the 431 sent for an overlong head, in the listener's provider's shape.
    header_rejection: Callable[[ProxyMode], bytes] = _default_rejection
    # The answer to send instead of mitmproxy's error page for (mode, status, message),
    # or None for mitmproxy's own page.
    error_response: Callable[[ProxyMode, int, str], http.Response | None] = _no_response
    # The response to send on a connection closed for inactivity, or None.
    timeout_response: Callable[[Any], http.Response | None] = _no_response


settings = Settings()
_installed = False


def install() -> None:
    """Wrap the two mitmproxy methods (once per process; later calls do nothing)."""
    global _installed
    if _installed:
        return
    _installed = True
    read_headers = Http1Server.read_headers
    consume_body = HttpStream.state_consume_request_body
    send = Http1Server.send
    on_timeout = ConnectionHandler.on_timeout

    # The wrappers are plain functions that return a generator: they run for every event
    # of every request, and an extra generator frame around mitmproxy's own would cost.
    def shaped_send(self: Http1Server, event: Any) -> Any:
        if (
            isinstance(event, ResponseProtocolError)
            and not self.response
            and self.conn.state & ConnectionState.CAN_WRITE
            and (status := event.code.http_status_code()) is not None
            and (
                response := settings.error_response(
                    self.context.client.proxy_mode, status, event.message
                )
            )
            is not None
        ):
            return _send_error(self, response)
        return send(self, event)

    async def answered_timeout(self: ConnectionHandler) -> None:
        io = self.transports.get(self.client)
        response = settings.timeout_response(self.client) if io is not None else None
        if response is not None and io.writer is not None:
            response.headers["connection"] = "close"
            with contextlib.suppress(Exception):
                io.writer.write(http1.assemble_response(response))
        await on_timeout(self)

    def limited_read_headers(self: Http1Server, event: events.Event) -> Any:
        if (
            isinstance(event, events.DataReceived)
            and len(self.buf) > settings.max_header_bytes
            and _HEAD_END.search(bytes(self.buf), 0, settings.max_header_bytes + 2) is None
        ):
            return _refuse_head(self)
        return read_headers(self, event)

    def guarded_consume_body(self: HttpStream, event: events.Event) -> Any:
        guard: BodyGuard | None = self.flow.metadata.get(GUARD_KEY)
        if guard is not None and isinstance(event, RequestData):
            if not guard.answered and len(self.request_body_buf) + len(event.data) > guard.limit:
                self.flow.response = guard.too_large()
                guard.answered = guard.over_limit = True
                guard.dropped = len(self.request_body_buf)
                self.request_body_buf.clear()
            if guard.answered:
                guard.dropped += len(event.data)
                return _cut_off(self) if guard.dropped > guard.drain else _nothing()
        return consume_body(self, event)

    Http1Server.read_headers = limited_read_headers  # type: ignore[method-assign]
    HttpStream.state_consume_request_body = guarded_consume_body  # type: ignore[method-assign]
    Http1Server.send = shaped_send  # type: ignore[method-assign]
    ConnectionHandler.on_timeout = answered_timeout  # type: ignore[method-assign]


def _send_error(server: Http1Server, response: http.Response) -> Any:
    response.headers["connection"] = "close"
    yield commands.SendData(server.conn, http1.assemble_response(response))
    yield commands.CloseConnection(server.conn)


def _nothing() -> Any:
    yield from ()


def _refuse_head(server: Http1Server) -> Any:
    body = settings.header_rejection(server.context.client.proxy_mode)
    response = http.Response.make(
        431, body, {"content-type": "application/json", "connection": "close"}
    )
    logger.warning(
        "llm-monitor: %s: request head over %d bytes refused",
        f"{server.conn.peername[0]}:{server.conn.peername[1]}" if server.conn.peername else "?",
        settings.max_header_bytes,
    )
    server.buf = type(server.buf)()  # drop what was read
    yield commands.SendData(server.conn, http1.assemble_response(response))
    yield commands.CloseConnection(server.conn)
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
