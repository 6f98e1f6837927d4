"""Hostile input, from clients and from upstreams: whatever arrives, the proxy answers the
others on time, stays within its memory, and records what happened.

Each hostile case runs while a "canary" client sends small requests through the same
proxy, one after another; every canary must be answered within 200 ms (a blocked event
loop shows as a canary that waited). The proxy's peak RSS is read from /proc (VmHWM).
Sizes are scaled to what CI can do: bombs expand to 200 MB, not a GiB.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.conftest import API_KEY, invoke, new_org
from tests.proxy import Proxy, rows, running_proxy, wait_for_rows
from tests.replay import QuietHandler, StandInServer

MiB = 1024 * 1024
CANARY_BOUND = 0.2  # seconds
RSS_BOUND_MB = 400
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}
USAGE = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}


def gzip_of_repeated(unit: bytes, size: int, head: bytes = b"", tail: bytes = b"") -> bytes:
    """gzip of head + unit repeated to `size` bytes + tail, made without holding it all."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = unit * (MiB // len(unit))
    out = [compressor.compress(head)]
    for _ in range(size // len(block)):
        out.append(compressor.compress(block))
    out.append(compressor.compress(tail))
    out.append(compressor.flush())
    return b"".join(out)


def chat_json(model: str = "gpt-4o-mini") -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}}],
            "usage": USAGE,
        }
    ).encode()


def sse(*events: Any) -> bytes:
    return b"".join(
        b"data: " + (e if isinstance(e, bytes) else json.dumps(e).encode()) + b"\n\n"
        for e in events
    )


FIRST = {"id": "c", "model": "gpt-4o-mini", "choices": [{"index": 0, "delta": {"content": "Hi"}}]}
LAST = {"id": "c", "model": "gpt-4o-mini", "choices": [], "usage": USAGE}


class Upstream(StandInServer):
    """A provider stand-in that answers by `?case=`; it keeps what it received (the first
    MB of each body, and its length)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.received: list[dict[str, Any]] = []
        self.connections = 0
        self.payloads: dict[str, bytes] = {}
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        self.connections += 1
        return True

    def seen(self, case: str) -> list[dict[str, Any]]:
        return [r for r in self.received if r["case"] == case]


class _Handler(QuietHandler):
    server: Upstream

    def do_POST(self) -> None:
        case = parse_qs(urlsplit(self.path).query).get("case", ["canary"])[0]
        length = int(self.headers.get("content-length") or 0)
        head, left = b"", length
        while left:
            piece = self.rfile.read(min(left, MiB))
            if not piece:
                break
            if len(head) < MiB:
                head += piece[: MiB - len(head)]
            left -= len(piece)
        self.server.received.append(
            {
                "case": case,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "length": length,
                "head": head,
            }
        )
        self.request_head = head
        getattr(self, f"reply_{case.replace('-', '_')}", self.reply_canary)()

    def _send(self, status: int, body: bytes, content_type: str, **headers: str) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def _chunked(self, content_type: str, pieces: Iterator[bytes], **headers: str) -> None:
        self.send_response(200)
        self.send_header("content-type", content_type)
        self.send_header("transfer-encoding", "chunked")
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        for piece in pieces:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def reply_canary(self) -> None:
        self._send(200, chat_json(), "application/json")

    def reply_echo_model(self) -> None:
        self._send(200, chat_json(json.loads(self.request_head)["model"]), "application/json")

    def reply_json_bomb(self) -> None:
        body = self.server.payloads["json-bomb"]
        self._send(200, body, "application/json", content_encoding="gzip")

    def reply_sse_bomb(self) -> None:
        body = self.server.payloads["sse-bomb"]
        self._send(200, body, "text/event-stream", content_encoding="gzip")

    def reply_long_line(self) -> None:
        line = 40 * MiB
        piece = b"a" * (64 * 1024)

        def pieces() -> Iterator[bytes]:
            yield sse(FIRST)
            yield b'data: {"pad": "'
            for _ in range(line // len(piece)):
                yield piece
            yield b'"}\n\n' + sse(LAST, b"[DONE]")

        self._chunked("text/event-stream", pieces())

    def reply_error_with_key(self) -> None:
        message = f"Incorrect API key provided: Bearer {API_KEY}. You can find your key at..."
        body = json.dumps({"error": {"message": message}})  # as some compatible APIs do
        self._send(401, body.encode(), "application/json")

    def reply_slow_stream(self) -> None:
        def pieces() -> Iterator[bytes]:
            yield sse(FIRST)
            time.sleep(1.0)
            yield sse(LAST, b"[DONE]")

        self._chunked("text/event-stream", pieces())


@pytest.fixture(scope="module")
def origin() -> Iterator[Upstream]:
    server = Upstream()
    pad = b'{"model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":1},"pad":['
    server.payloads["json-bomb"] = gzip_of_repeated(b"0,", 200 * MiB, head=pad, tail=b"0]}")
    server.payloads["sse-bomb"] = gzip_of_repeated(b"data: {}\n\n", 200 * MiB, head=sse(FIRST))
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def hostile_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db_path = tmp_path_factory.mktemp("hostile") / "llm-monitor.db"
    invoke(db_path, "init")
    return db_path


@pytest.fixture(scope="module")
def token(hostile_db: Path) -> str:
    return new_org(hostile_db, "Acme")


@pytest.fixture(scope="module")
def hostile(hostile_db: Path, origin: Upstream, token: str) -> Iterator[Proxy]:
    upstream_url = f"http://127.0.0.1:{origin.server_address[1]}"
    with running_proxy(hostile_db, upstream_url, monitor_log_requests=True) as proxy:
        yield proxy


def peak_rss_mb(proxy: Proxy) -> float:
    status = Path(f"/proc/{proxy.process.pid}/status").read_text()
    line = next(x for x in status.splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


class Canary:
    """Small requests, one after another, through the proxy; their latencies."""

    def __init__(self, proxy: Proxy, token: str) -> None:
        self.url = f"{proxy.base_url}/chat/completions?case=canary"
        self.headers = {"X-Monitor-Token": token, "Authorization": f"Bearer {API_KEY}"}
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    response = client.post(self.url, json=CHAT, headers=self.headers)
                    if response.status_code != 200:
                        self.failures.append(f"status {response.status_code}")
                except httpx.HTTPError as e:
                    self.failures.append(repr(e))
                self.latencies.append(time.perf_counter() - started)
                self._stop.wait(0.01)

    def __enter__(self) -> Canary:
        self._thread.start()
        time.sleep(0.2)  # a few canaries before the hostile request
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.2)  # and a few after
        self._stop.set()
        self._thread.join(30)

    def check(self) -> None:
        assert not self.failures, self.failures
        assert len(self.latencies) >= 5
        worst = max(self.latencies)
        assert worst < CANARY_BOUND, f"a canary waited {worst * 1000:.0f} ms"


@contextlib.contextmanager
def canary_during(proxy: Proxy, token: str) -> Iterator[Canary]:
    """Run the block with a canary going; then check the canary and the proxy's memory."""
    with Canary(proxy, token) as canary:
        yield canary
    canary.check()
    rss = peak_rss_mb(proxy)
    assert rss < RSS_BOUND_MB, f"peak RSS {rss:.0f} MB"
    print(f"canary worst {max(canary.latencies) * 1000:.1f} ms, peak RSS {rss:.0f} MB")


def row_where(proxy: Proxy, where: str, params: tuple = ()) -> dict[str, Any]:
    found = wait_for_rows(proxy.db_path, where, params)
    assert len(found) == 1, found
    return found[0]


def auth(token: str, **extra: str) -> dict[str, str]:
    return {"X-Monitor-Token": token, "Authorization": f"Bearer {API_KEY}", **extra}


def post_canary(
    proxy: Proxy, token: str, name: str, body: Any, timeout: float = 60, **headers: str
) -> httpx.Response:
    """POST `body` (bytes, or an iterator of chunks) as JSON to the upstream's canary case,
    named `name` in the path the row keeps."""
    return httpx.post(
        f"{proxy.base_url}/chat/completions?case=canary&n={name}",
        content=body,
        headers=auth(token, **{"Content-Type": "application/json", **headers}),
        timeout=timeout,
    )


# The hostile cases.


@pytest.mark.slow
def test_request_gzip_bomb_passes_on_unread(hostile: Proxy, token: str, origin: Upstream) -> None:
    body = gzip_of_repeated(
        b"a", 200 * MiB, head=b'{"model":"gpt-4o","stream":false,"pad":"', tail=b'"}'
    )
    with canary_during(hostile, token):
        response = post_canary(hostile, token, "req-bomb", body, **{"Content-Encoding": "gzip"})
    assert response.status_code == 200
    (seen,) = [r for r in origin.seen("canary") if "req-bomb" in r["path"]]
    assert seen["length"] == len(body) and seen["head"] == body[: len(seen["head"])]
    assert seen["headers"]["content-encoding"] == "gzip"  # untouched
    row = row_where(hostile, "path like '%req-bomb%'")
    assert row["unread_reason"] == "request body expands over 32 times when decoded: not read"
    assert (row["model"], row["response_model"], row["input_tokens"]) == (
        None,
        "gpt-4o-mini",
        9,
    )


@pytest.mark.slow
def test_response_gzip_bomb_passes_on_unread(hostile: Proxy, token: str) -> None:
    with (
        canary_during(hostile, token),
        httpx.stream(
            "POST",
            f"{hostile.base_url}/chat/completions?case=json-bomb",
            json=CHAT,
            headers=auth(token),
            timeout=60,
        ) as response,
    ):
        raw = b"".join(response.iter_raw())
    assert response.status_code == 200
    assert raw[:2] == b"\x1f\x8b" and len(raw) < 2 * MiB  # passed on as it came
    row = row_where(hostile, "path like '%case=json-bomb%'")
    assert row["outcome"] == "ok" and row["input_tokens"] is None
    assert row["unread_reason"].startswith("decodes to more than")


@pytest.mark.slow
def test_sse_gzip_bomb_passes_on_unread(hostile: Proxy, token: str, origin: Upstream) -> None:
    asks_for_usage = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    with (
        canary_during(hostile, token),
        httpx.stream(
            "POST",
            f"{hostile.base_url}/chat/completions?case=sse-bomb",
            json=asks_for_usage,
            headers=auth(token),
            timeout=60,
        ) as response,
    ):
        raw = b"".join(response.iter_raw())
    assert response.status_code == 200
    assert raw[:2] == b"\x1f\x8b"  # passed on as it came
    assert len(gzip.decompress(raw)) > 199 * MiB
    row = row_where(hostile, "path like '%case=sse-bomb%'")
    assert (row["outcome"], row["streamed"], row["input_tokens"]) == ("ok", 1, None)
    assert row["unread_reason"].startswith("decodes to more than")


@pytest.mark.slow
def test_sse_gzip_bomb_in_a_stream_the_proxy_rewrites_ends_cleanly(
    hostile: Proxy, token: str, origin: Upstream
) -> None:
    """The proxy asks for `identity` when it injects include_usage; an upstream that
    compresses anyway, and past the limits, gets its stream ended as valid gzip."""
    with (
        canary_during(hostile, token),
        httpx.stream(
            "POST",
            f"{hostile.base_url}/chat/completions?case=sse-bomb&n=injected",
            json={**CHAT, "stream": True},
            headers=auth(token),
            timeout=60,
        ) as response,
    ):
        raw = b"".join(response.iter_raw())
    (seen,) = [r for r in origin.seen("sse-bomb") if "injected" in r["path"]]
    assert seen["headers"]["accept-encoding"] == "identity"
    assert response.status_code == 200
    passed = gzip.decompress(raw)  # a valid gzip stream, of whole events only
    assert passed == b"" or passed.endswith(b"\n\n")
    row = row_where(hostile, "path like '%n=injected%'")
    assert (row["outcome"], row["usage_injected"]) == ("ok", 1)
    assert row["unread_reason"].startswith("decodes to more than")


@pytest.mark.slow
def test_sse_line_of_40_mb_passes_on_unread(hostile: Proxy, token: str) -> None:
    with (
        canary_during(hostile, token),
        httpx.stream(
            "POST",
            f"{hostile.base_url}/chat/completions?case=long-line",
            json={**CHAT, "stream": True, "stream_options": {"include_usage": True}},
            headers=auth(token),
            timeout=60,
        ) as response,
    ):
        size, tail = 0, b""
        for piece in response.iter_raw():
            size, tail = size + len(piece), (tail + piece)[-100:]
    assert response.status_code == 200
    assert size > 40 * MiB and tail.endswith(b"data: [DONE]\n\n")
    row = row_where(hostile, "path like '%case=long-line%'")
    assert (row["outcome"], row["response_model"]) == ("ok", "gpt-4o-mini")
    assert row["unread_reason"] == "an SSE line or event longer than 16777216 bytes"


@pytest.mark.slow
def test_json_body_over_the_limit_gets_413_unbuffered(
    hostile: Proxy, token: str, origin: Upstream
) -> None:
    body = b'{"model":"gpt-4o","messages":[' + b'{"role":"user","content":"x"},' * (60 * MiB // 30)
    body = body[:-1] + b"]}"
    before = len(origin.received)

    def chunks() -> Iterator[bytes]:  # no Content-Length: only the buffered size tells
        for i in range(0, len(body), MiB):
            yield body[i : i + MiB]

    with canary_during(hostile, token):
        declared = post_canary(hostile, token, "60mb", body)
        chunked = post_canary(hostile, token, "60mb-chunked", chunks())
    for response in (declared, chunked):
        assert response.status_code == 413
        error = response.json()["error"]
        assert error["code"] == "request_too_large" and "32 MB" in error["message"]
    assert [r for r in origin.received[before:] if "60mb" in r["path"]] == []
    assert rows(hostile.db_path, "path like '%60mb%'") == []  # never forwarded: no row


@pytest.mark.slow
def test_many_small_json_values_pass_on_unread(
    hostile: Proxy, token: str, origin: Upstream
) -> None:
    body = json.dumps(
        {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}] * 600_000}
    ).encode()
    assert 16 * MiB < len(body) < 32 * MiB
    with canary_during(hostile, token):
        response = post_canary(hostile, token, "small-values", body)
    assert response.status_code == 200
    (seen,) = [r for r in origin.received if "small-values" in r["path"]]
    assert seen["length"] == len(body)
    row = row_where(hostile, "path like '%small-values%'")
    assert row["unread_reason"] == "request body over 16 MB: not read"
    assert row["input_tokens"] == 9


@pytest.mark.parametrize(
    ("case", "pad", "read"),
    [
        # 250,000 values in 750 KB: more than the event loop parses (MAX_JSON_ITEMS).
        ("many-values", [0] * 250_000, False),
        # Longer than MAX_JSON_ITEMS bytes with few values: counted, and read.
        ("long-string", "x" * 300_000, True),
    ],
)
def test_json_values_are_counted_before_parsing(
    hostile: Proxy, token: str, origin: Upstream, case: str, pad: object, read: bool
) -> None:
    body = json.dumps({"model": "gpt-4o", "pad": pad}).encode()
    response = post_canary(hostile, token, case, body)
    assert response.status_code == 200
    (seen,) = [r for r in origin.seen("canary") if case in r["path"]]
    assert seen["length"] == len(body)
    row = row_where(hostile, "path like ?", (f"%{case}%",))
    if read:
        assert (row["model"], row["unread_reason"]) == ("gpt-4o", None)
    else:
        assert row["model"] is None
        assert row["unread_reason"] == "request body: JSON with more than 200000 values not parsed"
    assert row["input_tokens"] == 9  # the answer is read either way


UPLOAD = """
import socket, sys
port, size = int(sys.argv[1]), int(sys.argv[2])
s = socket.create_connection(("127.0.0.1", port))
s.sendall(b"POST /v1/chat/completions?n=no-token HTTP/1.1\\r\\nHost: x\\r\\n"
          b"Content-Type: application/json\\r\\nContent-Length: %d\\r\\n\\r\\n" % size)
block = b"x" * 65536
for _ in range(size // len(block)):
    s.sendall(block)
answer = b""
while chunk := s.recv(65536):
    answer += chunk
sys.stdout.buffer.write(answer)
"""


@pytest.mark.slow
def test_uploads_without_a_token_are_refused_unbuffered(
    hostile: Proxy, token: str, origin: Upstream
) -> None:
    """Four 50 MB uploads at once, sent from other processes (as an attacker would: the
    test's own threads would compete with the canary for the GIL)."""
    with canary_during(hostile, token):
        uploads = [
            subprocess.Popen(
                [sys.executable, "-c", UPLOAD, str(hostile.port), str(50 * MiB)],
                stdout=subprocess.PIPE,
            )
            for _ in range(4)
        ]
        answers = [upload.communicate(timeout=60)[0] for upload in uploads]
    for answer in answers:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 401"), answer[:300]
        assert b"\r\nconnection: close" in head.lower()
        assert json.loads(body)["error"]["code"] == "invalid_monitor_token"
    assert [r for r in origin.received if "no-token" in r["path"]] == []


def raw_request(proxy: Proxy, head: bytes, timeout: float = 10) -> bytes:
    """Send bytes as they are; what came back before the proxy closed the connection."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout) as s:
        with contextlib.suppress(OSError):
            s.sendall(head)
        out = b""
        with contextlib.suppress(OSError):
            while chunk := s.recv(65536):
                out += chunk
        return out


def test_oversize_headers_get_431(hostile: Proxy, token: str, origin: Upstream) -> None:
    before = len(origin.received)
    whole = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Monitor-Token: {token}\r\n"
        f"X-Pad: {'a' * 100_000}\r\nContent-Length: 2\r\n\r\n{{}}"
    ).encode()
    endless = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * (20 * MiB)
    with canary_during(hostile, token):
        answers = [raw_request(hostile, whole), raw_request(hostile, endless)]
    for answer in answers:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 431"), answer[:200]
        assert json.loads(body)["error"]["code"] == "request_headers_too_large"
    assert [r for r in origin.received[before:] if "x-pad" in r["headers"]] == []


# 500 concurrent streams.


@pytest.mark.slow
def test_500_concurrent_streams_all_answered_all_recorded(hostile: Proxy, token: str) -> None:
    count = 500

    async def one(client: httpx.AsyncClient, i: int) -> bytes:
        async with client.stream(
            "POST",
            f"{hostile.base_url}/chat/completions?case=slow-stream&n=c500-{i}",
            json={**CHAT, "stream": True, "stream_options": {"include_usage": True}},
            headers=auth(token),
        ) as response:
            assert response.status_code == 200
            return b"".join([piece async for piece in response.aiter_bytes()])

    async def run() -> list[bytes | BaseException]:
        limits = httpx.Limits(max_connections=count, max_keepalive_connections=0)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            return await asyncio.gather(
                *(one(client, i) for i in range(count)), return_exceptions=True
            )

    results = asyncio.run(run())
    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == []
    assert all(r.endswith(b"data: [DONE]\n\n") for r in results)
    found = wait_for_rows(hostile.db_path, "path like '%n=c500-%'", count=count, timeout=30)
    assert len(found) == count
    assert {(r["outcome"], r["input_tokens"]) for r in found} == {("ok", 9)}


# What never leaves a trace.


def db_bytes(db_path: Path) -> bytes:
    conn = sqlite3.connect(db_path)
    conn.execute("pragma wal_checkpoint(truncate)")
    conn.close()
    return b"".join(p.read_bytes() for p in db_path.parent.glob(db_path.name + "*"))


def test_credentials_are_never_stored_or_logged(
    hostile: Proxy, token: str, origin: Upstream
) -> None:
    secret = "AIzaSyNEVER-STORE-THIS-7f3a9c1e5b"
    query = f"case=canary&n=creds&key={secret}&access_token=at-SECRET-1&x-monitor-token={token}"
    response = httpx.post(
        f"{hostile.base_url}/chat/completions?{query}&api_key=ak-SECRET-2&token=t-SECRET-3",
        json=CHAT,
        headers=auth(token),
    )
    assert response.status_code == 200
    (seen,) = [r for r in origin.received if "n=creds" in r["path"]]
    assert "x-monitor-token" not in seen["path"]  # ours is not forwarded
    assert f"key={secret}" in seen["path"]  # the provider's is
    error = httpx.post(
        f"{hostile.base_url}/chat/completions?case=error-with-key",
        json=CHAT,
        headers=auth(token),
    )
    assert error.status_code == 401 and API_KEY in error.text  # passed on as it came
    row = row_where(hostile, "path like '%n=creds%'")
    assert row["path"] == "/v1/chat/completions?case=canary&n=creds"
    row = row_where(hostile, "path like '%case=error-with-key%'")
    assert row["error"].startswith("Incorrect API key provided: Bearer [redacted]")
    # mitmproxy's own line for a request line it cannot parse carries the query
    raw_request(hostile, f"GET /v1/x?key={secret} HTTP/1.1 x\r\n\r\n".encode())
    time.sleep(0.3)
    stored, log = db_bytes(hostile.db_path), hostile.log()
    for value in (secret, "at-SECRET-1", "ak-SECRET-2", "t-SECRET-3", token, API_KEY):
        assert value.encode() not in stored
        assert value not in log


def test_no_x_monitor_header_reaches_the_provider(
    hostile: Proxy, token: str, origin: Upstream
) -> None:
    headers = [
        ("X-Monitor-Token", token),
        ("X-Monitor-Org", "acme"),
        ("X-Monitor-Foo", "bar"),
        ("x-monitor-user", "alice"),
        ("X_Monitor_Token", token),
        ("x_monitor_tags", "a=b"),
        ("Authorization", f"Bearer {API_KEY}"),
    ]
    response = httpx.post(
        f"{hostile.base_url}/chat/completions?case=canary&n=ours&x-monitor-org=acme",
        json=CHAT,
        headers=headers,
    )
    assert response.status_code == 200
    (seen,) = [r for r in origin.received if "n=ours" in r["path"]]
    assert [h for h in seen["headers"] if "monitor" in h] == []
    assert "monitor" not in seen["path"]
    assert seen["headers"]["authorization"] == f"Bearer {API_KEY}"
    assert row_where(hostile, "path like '%n=ours%'")["user"] == "alice"


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /v1/chat/completions?n=phantom-clte HTTP/1.1\r\nHost: x\r\nX-Monitor-Token: {t}"
        b"\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /v1/chat/completions?n=phantom-2cl HTTP/1.1\r\nHost: x\r\nX-Monitor-Token: {t}"
        b"\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        b"CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n"
        b"X-Monitor-Token: {t}\r\n\r\n",
        b"POST /v1/chat/completions?n=phantom-cut HTTP/1.1\r\nHost: x\r\nX-Monitor-Token: {t}"
        b"\r\nContent-Length: 100\r\n\r\n{}",
    ],
    ids=["cl-and-te", "two-content-lengths", "connect", "client-left-mid-body"],
)
def test_requests_never_forwarded_leave_no_row(
    hostile: Proxy, token: str, origin: Upstream, request_bytes: bytes
) -> None:
    before, connections = len(rows(hostile.db_path)), origin.connections
    with socket.create_connection(("127.0.0.1", hostile.port), timeout=5) as s:
        s.sendall(request_bytes.replace(b"{t}", token.encode()))
        s.settimeout(1)
        with contextlib.suppress(OSError):
            answer = s.recv(65536)
            assert answer == b"" or answer.startswith(b"HTTP/1.1 4"), answer
    time.sleep(0.5)
    assert len(rows(hostile.db_path)) == before
    assert origin.connections == connections


# Output that stays inert.

EVIL = "evil\x1b[2J\n2026-01-01 INFO forged line"


def test_client_values_cannot_forge_log_lines_or_drive_terminals(
    hostile: Proxy, token: str, origin: Upstream
) -> None:
    response = httpx.post(
        f"{hostile.base_url}/chat/completions?case=echo-model&n=evil",
        json={**CHAT, "model": EVIL},
        headers=auth(token),
    )
    assert response.status_code == 200
    row = row_where(hostile, "path like '%n=evil%'")
    assert row["response_model"] == EVIL  # stored as sent: the database keeps what came
    wait_for_rows(hostile.db_path, "1")
    time.sleep(0.3)
    log = hostile.log()
    assert "\x1b" not in log
    assert "\n2026-01-01 INFO forged line" not in log
    assert "evil\\x1b[2J\\n2026-01-01 INFO forged line" in log
    # ...nor in the command line's tables
    for args in (["stats"], ["pricing", "unpriced"]):
        output = cli_output(hostile.db_path, *args)
        assert "\x1b" not in output and "\n2026-01-01" not in output
        assert "evil\\x1b[2J\\n2026" in output


def cli_output(db_path: Path, *args: str) -> str:
    from click.testing import CliRunner

    from llm_monitor.cli import cli

    result = CliRunner().invoke(cli, ["--db", str(db_path), *args])
    assert result.exit_code == 0, result.output
    return result.output


def cli_refuses(db_path: Path, *args: str) -> str:
    from click.testing import CliRunner

    from llm_monitor.cli import cli

    result = CliRunner().invoke(cli, ["--db", str(db_path), *args])
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    return result.output


def test_command_line_checks_names_ids_amounts_and_file_sizes(tmp_path: Path) -> None:
    db_path = tmp_path / "llm-monitor.db"
    invoke(db_path, "init")
    assert "printable" in cli_refuses(db_path, "orgs", "create", "Acme\nEvil", "--email", "a@x")
    assert "printable" in cli_refuses(db_path, "orgs", "create", "x" * 101, "--email", "a@x")
    new_org(db_path, "Acme")
    assert "printable" in cli_refuses(
        db_path, "tokens", "create", "--org", "Acme", "--name", "a\x1b[2Jb"
    )
    cli_refuses(db_path, "tokens", "revoke", "\u0661")  # ARABIC-INDIC DIGIT ONE is not 1
    assert cli_output(db_path, "tokens", "list", "--json").count('"revoked_at": null') == 1
    cli_refuses(db_path, "pricing", "set", "m", "--input", "\u0661", "--output", "1")
    assert "larger than 16 MB" in cli_refuses(db_path, "pricing", "import", "/dev/zero")


def test_logout_ends_the_session_on_the_server(tmp_path: Path) -> None:
    import re

    from tests.conftest import invoke_with_password
    from tests.proxy import running_dashboard

    db_path = tmp_path / "llm-monitor.db"
    invoke(db_path, "init")
    new_org(db_path, "Acme")
    assert invoke_with_password(db_path, "a-long-password", "orgs", "set-password", "Acme")
    with (
        running_dashboard(db_path, tmp_path / "dashboard.log") as url,
        httpx.Client(base_url=url) as browser,
    ):
        form = browser.get("/-/login")
        csrftoken = re.search(r'name="csrftoken" value="([^"]+)"', form.text).group(1)
        login = browser.post(
            "/-/login",
            data={"email": "ops@x.example", "password": "a-long-password", "csrftoken": csrftoken},
        )
        assert login.status_code == 302
        session = browser.cookies["ds_actor"]
        assert httpx.get(
            f"{url}/llm-monitor/summary.json", cookies={"ds_actor": session}
        ).is_success
        page = browser.get("/-/logout")
        csrftoken = re.search(r'name="csrftoken" value="([^"]+)"', page.text).group(1)
        assert browser.post("/-/logout", data={"csrftoken": csrftoken}).status_code == 302
        # A copy of the cookie, kept from before the logout, no longer works.
        stolen = httpx.get(f"{url}/llm-monitor/summary.json", cookies={"ds_actor": session})
        assert stolen.status_code == 403
        again = browser.get("/-/login")  # a new login works
        csrftoken = re.search(r'name="csrftoken" value="([^"]+)"', again.text).group(1)
        relogin = browser.post(
            "/-/login",
            data={"email": "ops@x.example", "password": "a-long-password", "csrftoken": csrftoken},
        )
        assert relogin.status_code == 302
        assert browser.get("/llm-monitor/summary.json").is_success
