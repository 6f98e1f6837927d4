"""Errors in the provider's shape beyond HTTP/1's 502: for HTTP/2 clients (TLS to the
listener, ALPN h2), and for request heads mitmproxy cannot parse (400) or that are too long
(431), answered, logged and counted, through a real proxy."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import time
from pathlib import Path

import anthropic
import httpx
import httpx2
import openai
import pytest

from tests.conftest import API_KEY, invoke, new_org
from tests.proxy import Proxy, free_port, running_proxy, wait_for_log, wait_for_rows
from tests.replay import ReplayServer, load_recording
from tests.test_production import Silent

CHAT = load_recording("openai/chat_json_text_gpt-4o.json")


class H2First(ssl.SSLContext):
    """A client context that offers h2 before http/1.1, as curl, Go and gRPC clients do
    (httpx offers http/1.1 first, and mitmproxy takes the client's first choice)."""

    def set_alpn_protocols(self, alpn_protocols: list[str]) -> None:
        super().set_alpn_protocols(sorted(alpn_protocols, key=lambda p: p != "h2"))


def h2_context() -> ssl.SSLContext:
    context = H2First(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the listener shows mitmproxy's own certificate
    return context


def h2_client() -> httpx.Client:
    return httpx.Client(http2=True, verify=h2_context(), timeout=20)


def openai_over_h2(proxy: Proxy, token: str, http_client: httpx.Client) -> openai.OpenAI:
    """The openai SDK on a listener over TLS, with a client that speaks HTTP/2."""
    return openai.OpenAI(
        base_url=f"{tls_url(proxy, 'openai')}/v1",
        api_key=API_KEY,
        max_retries=0,
        default_headers={"X-Monitor-Token": token},
        http_client=http_client,
    )


def tls_url(proxy: Proxy, provider: str) -> str:
    return f"https://127.0.0.1:{proxy.ports[provider]}"


@pytest.fixture
def db_and_token(tmp_path: Path) -> tuple[Path, str]:
    db_path = tmp_path / "e.db"
    invoke(db_path, "init")
    return db_path, new_org(db_path, "Acme")


def test_http2_client_gets_the_providers_502(db_and_token: tuple[Path, str]) -> None:
    db_path, token = db_and_token
    upstream = f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused
    confdir = db_path.parent / "mitmproxy"
    with running_proxy(
        db_path, upstream, providers=("openai", "anthropic"), confdir=confdir
    ) as proxy:
        with h2_client() as raw:
            answer = raw.post(
                f"{tls_url(proxy, 'openai')}/v1/chat/completions",
                json=CHAT["request"]["body"],
                headers={"X-Monitor-Token": token, "Authorization": f"Bearer {API_KEY}"},
            )
        assert answer.http_version == "HTTP/2"
        assert answer.status_code == 502
        assert answer.headers["content-type"] == "application/json"
        error = answer.json()["error"]
        assert error["code"] == "upstream_unreachable"
        assert error["type"] == "server_error"
        assert "LLM Monitor could not reach the provider" in error["message"]

        # The official SDKs over HTTP/2 raise their usual status error.
        with h2_client() as http_client:
            client = openai_over_h2(proxy, token, http_client)
            with pytest.raises(openai.APIStatusError) as caught:
                client.chat.completions.create(**CHAT["request"]["body"])
        assert caught.value.status_code == 502
        assert caught.value.response.http_version == "HTTP/2"
        assert caught.value.code == "upstream_unreachable"

        # The Anthropic SDK brings its own fork of httpx.
        with httpx2.Client(http2=True, verify=h2_context(), timeout=20) as http_client:
            claude = anthropic.Anthropic(
                base_url=tls_url(proxy, "anthropic"),
                api_key="sk-ant-test",
                max_retries=0,
                default_headers={"X-Monitor-Token": token},
                http_client=http_client,
            )
            with pytest.raises(anthropic.InternalServerError) as caught_a:
                claude.messages.create(
                    model="claude-haiku-4-5",
                    max_tokens=10,
                    messages=[{"role": "user", "content": "hi"}],
                )
        assert caught_a.value.status_code == 502
        assert caught_a.value.response.http_version == "HTTP/2"
        assert caught_a.value.body["error"]["type"] == "api_error"
        assert "could not reach the provider" in caught_a.value.message

        found = wait_for_rows(db_path, "1", count=3)
    assert [r["outcome"] for r in found] == ["upstream_error"] * 3
    assert "<html" not in proxy.log().lower()


def test_http2_client_of_a_silent_provider_gets_the_providers_504(
    db_and_token: tuple[Path, str],
) -> None:
    db_path, token = db_and_token
    silent = Silent()
    confdir = db_path.parent / "mitmproxy"
    try:
        with running_proxy(
            db_path, f"http://127.0.0.1:{silent.port}", tcp_timeout=2, confdir=confdir
        ) as proxy:
            with h2_client() as http_client:
                client = openai_over_h2(proxy, token, http_client)
                with pytest.raises(openai.APIStatusError) as caught:
                    client.chat.completions.create(**CHAT["request"]["body"])
            found = wait_for_rows(db_path, "1")
    finally:
        silent.close()
    assert caught.value.status_code == 504
    assert caught.value.response.http_version == "HTTP/2"
    assert caught.value.code == "upstream_timeout"
    assert "did not answer within 2 s" in caught.value.message
    assert found[0]["outcome"] == "upstream_error"
    assert "upstream silent" in found[0]["error"]


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
def test_tls_failure_to_the_provider_gets_a_502(
    db_and_token: tuple[Path, str], upstream: ReplayServer, http2: bool
) -> None:
    """The provider's port speaks plain HTTP where TLS was expected: the handshake fails."""
    db_path, token = db_and_token
    confdir = db_path.parent / "mitmproxy"
    with running_proxy(db_path, f"https://127.0.0.1:{upstream.port}", confdir=confdir) as proxy:
        client = h2_client() if http2 else httpx.Client(verify=False, timeout=20)
        with client:
            answer = client.post(
                f"{tls_url(proxy, 'openai')}/v1/chat/completions",
                json=CHAT["request"]["body"],
                headers={"X-Monitor-Token": token, "Authorization": f"Bearer {API_KEY}"},
            )
        assert answer.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
        assert answer.status_code == 502
        assert answer.json()["error"]["code"] == "upstream_unreachable"
        assert "tls" in answer.json()["error"]["message"].lower()
        found = wait_for_rows(db_path, "1")
    assert found[0]["outcome"] == "upstream_error"


def raw_request(port: int, data: bytes, timeout: float = 10) -> bytes:
    """Send bytes as they are; what came back before the proxy closed the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        with contextlib.suppress(OSError):
            s.sendall(data)
        out = b""
        with contextlib.suppress(OSError):
            while chunk := s.recv(65536):
                out += chunk
        return out


MALFORMED = {
    "bad request line": b"GARBAGE\r\n\r\n",
    "bad header line": b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n",
    "bad content-length": b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n",
    "NUL in a header name": b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-A\x00b: 1\r\n\r\n",
    "both framings": (
        b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "unknown HTTP version": b"GET /v1/models HTTP/9\r\nHost: x\r\n\r\n",
}


def test_malformed_heads_get_a_400_in_the_providers_shape_logged_and_counted(
    db_and_token: tuple[Path, str], upstream: ReplayServer
) -> None:
    db_path, token = db_and_token
    metrics_port = free_port()
    with running_proxy(
        db_path,
        f"http://127.0.0.1:{upstream.port}",
        providers=("anthropic",),
        monitor_metrics_port=metrics_port,
        monitor_max_header_kb=8,
    ) as proxy:
        for name, data in MALFORMED.items():
            answer = raw_request(proxy.port, data)
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 400 "), (name, answer[:300])
            assert b"content-type: application/json" in head.lower(), name
            assert b"connection: close" in head.lower(), name
            error = json.loads(body)  # Anthropic's shape: the listener's provider
            assert error["type"] == "error", name
            assert error["error"]["type"] == "invalid_request_error", name
            assert error["error"]["code"] == "malformed_request", name
            assert error["error"]["message"].startswith("Malformed request: "), name
            assert "validate_inbound_headers" not in error["error"]["message"]
        too_long = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 20_000
        answer = raw_request(proxy.port, too_long)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 431 "), answer[:300]
        assert json.loads(body)["error"]["code"] == "request_headers_too_large"
        assert json.loads(body)["error"]["message"] == (
            "Request headers larger than 8 KB (LLM Monitor)."
        )

        # The proxy still serves a good request afterwards, and none of those reached
        # the provider.
        ok = httpx.get(
            f"{proxy.url('anthropic')}/v1/models",
            headers={"X-Monitor-Token": token, "x-api-key": "sk-ant-test"},
        )
        assert ok.status_code == 500  # the replay server's answer: nothing queued
        assert upstream.take_received().path == "/v1/models"
        assert upstream.received.empty()

        wait_for_log(proxy, "431 request_headers_too_large")
        log = proxy.log()
        count = len(MALFORMED)
        assert log.count(
            "refused a request from 127.0.0.1 on anthropic: 400 malformed_request"
        ) == (count), log
        assert "Traceback" not in log and "<html" not in log.lower()
        deadline = time.monotonic() + 10
        while True:
            text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
            if f'reason="malformed_request"}} {float(count)}' in text:
                break
            assert time.monotonic() < deadline, text
            time.sleep(0.1)
        assert 'reason="request_headers_too_large"} 1.0' in text
    assert [r["path"] for r in wait_for_rows(db_path, "1")] == ["/v1/models"]


def test_malformed_head_as_a_json_log_line(db_and_token: tuple[Path, str]) -> None:
    db_path, _ = db_and_token
    with running_proxy(db_path, f"http://127.0.0.1:{free_port()}", monitor_log_json=True) as proxy:
        raw_request(proxy.port, b"GARBAGE\r\n\r\n")
        wait_for_log(proxy, '"reason": "malformed_request"')
        lines = [json.loads(line) for line in proxy.log().splitlines() if line.startswith("{")]
    refused = [entry for entry in lines if entry.get("event") == "rejected"]
    assert len(refused) == 1, lines
    assert refused[0] | {"ts": None} == refused[0] | {
        "ts": None,
        "level": "warning",
        "client": "127.0.0.1",
        "provider": "openai",
        "status": 400,
        "reason": "malformed_request",
    }


def test_http2_in_clear_text_gets_a_goaway_it_can_read(db_and_token: tuple[Path, str]) -> None:
    """h2c with prior knowledge (mitmproxy serves HTTP/2 over TLS only): a GOAWAY with
    HTTP_1_1_REQUIRED rather than an HTTP/1 answer, logged as what it is, not as a request
    without a monitor token."""
    db_path, token = db_and_token
    with running_proxy(db_path, f"http://127.0.0.1:{free_port()}") as proxy:
        with (
            httpx.Client(http1=False, http2=True, timeout=10) as client,
            pytest.raises(httpx.RemoteProtocolError, match="error_code:13"),  # HTTP_1_1_REQUIRED
        ):
            client.get(f"{proxy.url('openai')}/v1/models", headers={"X-Monitor-Token": token})
        wait_for_log(proxy, "505 http2_cleartext")
        log = proxy.log()
    assert "invalid_monitor_token" not in log and "Traceback" not in log


def test_a_malformed_head_after_a_good_request_on_one_connection(
    db_and_token: tuple[Path, str], upstream: ReplayServer
) -> None:
    """Pipelined: the good request is answered (by the provider), then the bad head gets
    its JSON 400; the refusal is the second head's, not the first's."""
    db_path, token = db_and_token
    with running_proxy(db_path, f"http://127.0.0.1:{upstream.port}") as proxy:
        good = f"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Monitor-Token: {token}\r\n\r\n"
        answer = raw_request(proxy.port, good.encode() + b"GARBAGE\r\n\r\n")
        wait_for_log(proxy, "400 malformed_request")
    first, _, rest = answer.partition(b"HTTP/1.1 400 ")
    assert first.startswith(b"HTTP/1.1 500 "), answer[:300]  # nothing queued upstream
    assert b'"code": "malformed_request"' in rest
    assert b"GARBAGE" in rest
    assert upstream.take_received().path == "/v1/models"
    assert [r["path"] for r in wait_for_rows(db_path, "1")] == ["/v1/models"]
