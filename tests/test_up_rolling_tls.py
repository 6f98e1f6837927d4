"""`llm-monitor up` in production: rolling restarts on SIGHUP, TLS in HAProxy."""

from __future__ import annotations

import datetime
import ipaddress
import signal
import ssl
import subprocess
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import API_KEY
from tests.proxy import row_for, rows, wait_for_port
from tests.replay import ReplayServer, Reply, load_recording
from tests.test_up import HAPROXY, LLM_MONITOR, start_up

pytestmark = pytest.mark.skipif(HAPROXY is None, reason="HAProxy is not installed")

RECORDING = load_recording("openai/chat_json_text_gpt-4o.json")


def proxy_pids(parent: int) -> set[int]:
    found = subprocess.run(["pgrep", "-P", str(parent), "-a"], capture_output=True, text=True)
    return {int(line.split()[0]) for line in found.stdout.splitlines() if " proxy --mode " in line}


class Load:
    """Requests in a loop on a thread until stopped: each outcome kept (the request id the
    provider gave, or the error)."""

    def __init__(self, send: object) -> None:
        self.send = send
        self.ok: list[str] = []
        self.failed: list[str] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.ok.append(self.send())
            except Exception as e:
                self.failed.append(repr(e))

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(30)


@pytest.mark.slow
def test_sighup_restarts_the_workers_without_dropping_a_call(
    tmp_path: Path, upstream: ReplayServer
) -> None:
    for _ in range(5000):  # answers take a little while: some are in flight at each restart
        upstream.reply(Reply.from_recording(RECORDING, delay=0.01))
    up = start_up(
        tmp_path, upstream, "--workers", "2", "--", "--set", "monitor_flush_ms=20", workers=2
    )
    url = f"http://127.0.0.1:{up.port}/v1/chat/completions"
    headers = {"X-Monitor-Token": up.token}
    body = RECORDING["request"]["body"]

    def new_connection() -> str:
        response = httpx.post(url, json=body, headers=headers)
        assert response.status_code == 200, response.text
        return response.headers["x-request-id"]

    keep_alive = httpx.Client(headers=headers)

    def same_connection() -> str:
        response = keep_alive.post(url, json=body)
        assert response.status_code == 200, response.text
        return response.headers["x-request-id"]

    sdk = openai.OpenAI(
        base_url=f"http://127.0.0.1:{up.port}/v1",
        api_key=API_KEY,
        default_headers=headers,
        max_retries=0,  # a dropped call must show, not be retried away
    )

    def through_the_sdk() -> str:
        return sdk.chat.completions.with_raw_response.create(**body).headers["x-request-id"]

    try:
        before = proxy_pids(up.process.pid)
        assert len(before) == 2
        loads = [Load(new_connection), Load(same_connection), Load(through_the_sdk)]
        time.sleep(1)
        up.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 120
        while "llm-monitor: rolling restart done" not in up.log.read_text():
            assert up.process.poll() is None and time.monotonic() < deadline, up.log.read_text()
            time.sleep(0.1)
        time.sleep(1)  # traffic on the new workers too
        for load in loads:
            load.stop()
        after = proxy_pids(up.process.pid)
        sent = [request_id for load in loads for request_id in load.ok]
        found = {row["request_id"] for row in wait_rows(up.db_path, len(sent))}
    finally:
        keep_alive.close()
        assert up.stop() == 0
    assert [load.failed for load in loads] == [[], [], []]
    assert all(len(load.ok) > 20 for load in loads), [len(load.ok) for load in loads]
    assert len(after) == 2 and not after & before
    assert set(sent) <= found and len(found) == len(sent)
    log = up.log.read_text()
    assert log.count("llm-monitor: recording usage in") == 4
    assert "proxy_shutdown" not in "".join(r["outcome"] for r in rows(up.db_path, "1"))


def wait_rows(db_path: Path, count: int, timeout: float = 20) -> list[dict]:
    deadline = time.monotonic() + timeout
    while len(found := rows(db_path, "1")) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost: (certificate and key for HAProxy, the
    certificate alone for the client to trust)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "llm-monitor test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (both := directory / "server.pem").write_bytes(cert_pem + key_pem)
    (alone := directory / "ca.pem").write_bytes(cert_pem)
    return both, alone


def test_tls_cert_serves_the_proxy_and_the_dashboard_over_https(
    tmp_path: Path, upstream: ReplayServer
) -> None:
    server_pem, ca = self_signed(tmp_path)
    up = start_up(tmp_path, upstream, "--tls-cert", str(server_pem))
    trusted = ssl.create_default_context(cafile=str(ca))
    try:
        reply = upstream.reply(Reply.from_recording(RECORDING))
        client = openai.OpenAI(
            base_url=f"https://127.0.0.1:{up.port}/v1",
            api_key=API_KEY,
            default_headers={"X-Monitor-Token": up.token},
            max_retries=0,
            http_client=httpx.Client(verify=trusted),
        )
        completion = client.chat.completions.create(**RECORDING["request"]["body"])
        row = row_for(up.db_path, reply.request_id)
        wait_for_port(up.dashboard_port, up.process, up.log)
        login = httpx.get(f"https://127.0.0.1:{up.dashboard_port}/-/login", verify=trusted)
        with pytest.raises(httpx.TransportError):  # plain HTTP is not served
            httpx.post(f"http://127.0.0.1:{up.port}/v1/chat/completions", json={})
    finally:
        assert up.stop() == 0
    assert completion.usage.prompt_tokens == 16
    assert (row["provider"], row["input_tokens"], row["status"]) == ("openai", 16, 200)
    assert login.status_code == 200 and "Log in to LLM Monitor" in login.text
    log = up.log.read_text()
    assert f"openai: https://127.0.0.1:{up.port}" in log
    assert f"dashboard: https://127.0.0.1:{up.dashboard_port}/" in log


def test_tls_cert_without_a_key_is_refused_before_anything_starts(tmp_path: Path) -> None:
    _, certificate_only = self_signed(tmp_path)
    result = subprocess.run(
        [str(LLM_MONITOR), "--db", str(tmp_path / "x.db"), "up", "--tls-cert", certificate_only],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert "no private key in the file" in result.stderr
    assert "openai:" not in result.stderr  # nothing announced


def test_sighup_with_one_worker_is_ignored(tmp_path: Path, upstream: ReplayServer) -> None:
    up = start_up(tmp_path, upstream)
    try:
        up.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "SIGHUP ignored" not in up.log.read_text():
            assert up.process.poll() is None and time.monotonic() < deadline, up.log.read_text()
            time.sleep(0.05)
        reply = upstream.reply(Reply.from_recording(RECORDING))
        response = httpx.post(
            f"http://127.0.0.1:{up.port}/v1/chat/completions",
            json=RECORDING["request"]["body"],
            headers={"X-Monitor-Token": up.token},
        )
        assert response.status_code == 200
        assert row_for(up.db_path, reply.request_id)["status"] == 200
    finally:
        assert up.stop() == 0
