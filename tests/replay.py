"""The one stand-in the tests allow: a local upstream that replays recorded provider responses.

Each response is queued by the test before it sends the request, and can be split into
chunks at random byte boundaries (a fixed seed), gzip-encoded, slowed down, or cut off.
Every request received and every connection accepted is kept for assertions.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import queue
import random
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import brotli
import zstandard

CORPUS = Path(__file__).parent / "corpus"
ENCODERS = {
    "identity": lambda body: body,
    "gzip": gzip.compress,
    "br": brotli.compress,
    "zstd": lambda body: zstandard.ZstdCompressor().compress(body),
}


def load_recording(name: str) -> dict[str, Any]:
    return json.loads((CORPUS / name).read_text(encoding="utf-8"))


def split_at_random(data: bytes, seed: int, max_piece: int = 64) -> list[bytes]:
    """`data` in pieces of 1..max_piece bytes; the same seed gives the same pieces."""
    rng = random.Random(seed)
    pieces, i = [], 0
    while i < len(data):
        n = rng.randint(1, max_piece)
        pieces.append(data[i : i + n])
        i += n
    return pieces


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: str = "application/json"
    seed: int | None = None  # split into random pieces sent as separate HTTP chunks
    encoding: str = "identity"  # or gzip, br, zstd: the Content-Encoding of the reply
    delay: float = 0.0  # seconds before each piece (the first included)
    header_delay: float = 0.0  # seconds before the status line
    cut_after: int | None = None  # close the connection after this many pieces
    pieces: list[bytes] | None = None  # explicit pieces of an identity body, instead of a seed
    hold_after: int | None = None  # after this many pieces, wait for `release` to be set
    release: threading.Event = field(default_factory=threading.Event)
    request_id: str = field(default_factory=lambda: f"req_{uuid.uuid4().hex}")
    extra_headers: dict[str, str] = field(default_factory=dict)
    sent: bytes = b""  # the body as it went on the wire (encoded), once sent

    @classmethod
    def from_recording(cls, recording: dict[str, Any], **kwargs: Any) -> Reply:
        response = recording["response"]
        return cls(
            status=response["status"],
            body=response["body_text"].encode("utf-8"),
            content_type=response["headers"].get("content-type", "application/json"),
            **kwargs,
        )


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class QuietHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive, no log lines, no Nagle delay, no traceback when the proxy hangs
    up: what every stand-in provider in the tests wants."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        # Headers and body leave in separate writes: without this, Nagle's algorithm and
        # delayed ACKs add 40 ms to every response.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle(self) -> None:
        with contextlib.suppress(OSError):  # the proxy hung up: part of several tests
            super().handle()


class _Handler(QuietHandler):
    server: ReplayServer

    def _handle(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.received.put(
            Received(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        )
        try:
            reply = self.server.replies.get_nowait()
        except queue.Empty:
            reply = Reply(500, b'{"error": {"message": "no reply queued", "code": "test"}}')
        payload = reply.sent = ENCODERS[reply.encoding](reply.body)
        time.sleep(reply.header_delay)
        self.send_response(reply.status)
        self.send_header("content-type", reply.content_type)
        self.send_header("x-request-id", reply.request_id)
        for name, value in reply.extra_headers.items():
            self.send_header(name, value)
        if reply.encoding != "identity":
            self.send_header("content-encoding", reply.encoding)
        chunked = reply.seed is not None or reply.pieces or reply.delay or reply.cut_after
        if not chunked:
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        if reply.pieces is not None:
            pieces = reply.pieces
        elif reply.seed is not None:
            pieces = split_at_random(payload, reply.seed)
        else:
            pieces = [payload]
        for index, piece in enumerate(pieces):
            if index == reply.hold_after:
                reply.release.wait(10)
            if reply.cut_after is not None and index >= reply.cut_after:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            time.sleep(reply.delay or 0.001)
            try:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.flush()
            except OSError:  # the proxy gave up on us (the client went away)
                self.close_connection = True
                return
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle


class StandInServer(ThreadingHTTPServer):
    """The server of every stand-in in the tests: a thread per connection that never
    holds the test up at exit, and a backlog for bursts. socketserver's default of 5 drops
    the SYNs of a burst (20 streams at once); each retry waits 1, 2, 4, 8 s, which a loaded
    machine runs into."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024


class ReplayServer(StandInServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.replies: queue.Queue[Reply] = queue.Queue()
        self.received: queue.Queue[Received] = queue.Queue()
        self.connections = 0
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def verify_request(self, request: Any, client_address: Any) -> bool:
        self.connections += 1
        return True

    def reply(self, reply: Reply) -> Reply:
        self.replies.put(reply)
        return reply

    def take_received(self, timeout: float = 5) -> Received:
        return self.received.get(timeout=timeout)

    def reset(self) -> None:
        for q in (self.replies, self.received):
            while not q.empty():
                q.get_nowait()

    def __enter__(self) -> ReplayServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
