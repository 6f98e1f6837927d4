"""Running it in production, through a real proxy: Prometheus metrics, rejected requests in
the log, errors in the provider's shape when the provider cannot be reached, and a drain
on SIGTERM that lets streams in flight finish."""

from __future__ import annotations

import json
import re
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from llm_monitor.proxy.addon import BadMonitorHeader, parse_tags
from llm_monitor.proxy.logs import Throttle
from llm_monitor.proxy.metrics import MAX_FAMILIES, MAX_MODEL_NAMES, Metrics
from tests.conftest import API_KEY, invoke, new_org
from tests.proxy import free_port, running_proxy, wait_for_rows
from tests.replay import ReplayServer, Reply, load_recording

CHAT = load_recording("openai/chat_json_text_gpt-4o.json")  # 16 in, 12 out, $0.00016
STREAM = load_recording("openai/chat_stream_text_include_usage_gpt-4o.json")  # 16 in, 10 out


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:]+)(?:\{(.*)\})? (\S+)$", line)
        if match is None or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(3))
    return total


def scrape(port: int) -> str:
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text


def openai_client(base_url: str, token: str, **kwargs: object) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=base_url,
        api_key=API_KEY,
        max_retries=0,
        default_headers={"X-Monitor-Token": token},
        timeout=20,
        **kwargs,
    )


def test_metrics_count_requests_tokens_cost_and_rejections(
    tmp_path: Path, upstream: ReplayServer
) -> None:
    db_path = tmp_path / "m.db"

    invoke(db_path, "init")
    token = new_org(db_path, "Acme")
    port = free_port()
    with running_proxy(
        db_path, f"http://127.0.0.1:{upstream.port}", monitor_metrics_port=port
    ) as proxy:
        client = openai_client(proxy.base_url, token)
        for _ in range(3):
            upstream.reply(Reply.from_recording(CHAT))
            client.chat.completions.create(**CHAT["request"]["body"])
        upstream.reply(Reply.from_recording(STREAM, seed=3))
        for _ in client.chat.completions.create(**STREAM["request"]["body"]):
            pass
        with pytest.raises(openai.AuthenticationError):
            openai_client(proxy.base_url, "mon_not-a-real-token").models.list()
        wait_for_rows(db_path, "1", count=4)
        deadline = time.monotonic() + 10
        while True:  # the cost is counted once the recorder has written the rows, the
            # requests within a second of their end
            text = scrape(port)
            if (
                metric(text, "llm_monitor_cost_usd_total") >= 0.00016 * 3 + 0.00014 - 1e-12
                and metric(text, "llm_monitor_requests_total") >= 4
            ):
                break
            assert time.monotonic() < deadline, text
            time.sleep(0.1)
        labels = {"provider": "openai", "model_family": "gpt-4o", "org": "1"}
        assert metric(text, "llm_monitor_requests_total", **labels, outcome="ok") == 4
        assert metric(text, "llm_monitor_requests_total", status_class="2xx") == 4
        assert metric(text, "llm_monitor_tokens_total", **labels, kind="input") == 16 * 4
        assert metric(text, "llm_monitor_tokens_total", **labels, kind="output") == 12 * 3 + 10
        assert metric(text, "llm_monitor_cost_usd_total", **labels) == pytest.approx(0.00062)
        assert metric(text, "llm_monitor_request_duration_seconds_count") == 4
        assert metric(text, "llm_monitor_time_to_first_token_seconds_count") == 1
        rejected = {"provider": "openai", "reason": "invalid_monitor_token"}
        assert metric(text, "llm_monitor_rejected_requests_total", **rejected) == 1
        assert "llm_monitor_recorder_queue_rows" in text
        assert "llm_monitor_spool_bytes" in text
        # No per-user or per-token label anywhere.
        assert "token=" not in text and "user=" not in text
        # The refused request is in the log with its reason and the token's prefix only.
        log = proxy.log()
        assert "refused GET /v1/models from 127.0.0.1 on openai: 401 invalid_monitor_token" in log
        assert "(token mon_not-a-)" in log
        assert "mon_not-a-real-token" not in log and API_KEY not in log


def test_budget_rate_limit_and_body_refusals_are_logged_and_counted(
    tmp_path: Path, upstream: ReplayServer
) -> None:
    """Every refusal the proxy answers itself has its line and its count: a rate limit, a
    hard budget, and a body past the limit that declared no length."""
    db_path = tmp_path / "r.db"
    invoke(db_path, "init")
    token = new_org(db_path, "Acme")
    invoke(db_path, "limits", "set", "--org", "Acme", "--rpm", "1")
    other = new_org(db_path, "Beta")
    invoke(db_path, "budgets", "set", "--org", "Beta", "--period", "day", "--usd", "0.000001")
    port = free_port()
    with running_proxy(
        db_path,
        f"http://127.0.0.1:{upstream.port}",
        monitor_metrics_port=port,
        monitor_max_request_mb=1,
    ) as proxy:
        client = openai_client(proxy.base_url, token)
        upstream.reply(Reply.from_recording(CHAT))
        client.chat.completions.create(**CHAT["request"]["body"])
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(**CHAT["request"]["body"])
        # Beta's budget affords no request at all.
        with pytest.raises(openai.RateLimitError, match="budget"):
            openai_client(proxy.base_url, other).chat.completions.create(**CHAT["request"]["body"])

        def body(chunks: int):  # chunked: no Content-Length to refuse it by
            for _ in range(chunks):
                yield b"x" * 65536

        # 1.5 MB: past the limit; 2.5 MB: past what is drained after the answer, cut off.
        for chunks in (24, 40):
            response = httpx.post(
                proxy.base_url + "/chat/completions",
                content=body(chunks),
                headers={"X-Monitor-Token": token, "content-type": "application/json"},
                timeout=20,
            )
            assert response.status_code == 413
            assert response.json()["error"]["code"] == "request_too_large"
        text = scrape(port)
        for reason in ("rate_limit_exceeded", "budget_exceeded", "request_too_large"):
            labels = {"provider": "openai", "reason": reason}
            assert metric(text, "llm_monitor_rejected_requests_total", **labels) >= 1, reason
        log = proxy.log()
        prefix = token[: token.find("_") + 7]
        for line in (
            f"on openai: 429 rate_limit_exceeded (token {prefix})",
            f"on openai: 413 request_too_large (token {prefix})",
        ):
            assert line in log, line
        assert token not in log and other not in log
        assert f"429 budget_exceeded (token {other[: other.find('_') + 7]})" in log


def test_model_families_stay_bounded_whatever_clients_send() -> None:
    """Model names come from clients: the label values, and what is remembered of them,
    stay bounded however many a client invents."""
    metrics = Metrics()
    families = {metrics.family(f"m{i}-x{i}-2024") for i in range(2 * MAX_MODEL_NAMES)}
    assert len(families) == MAX_FAMILIES + 1 and "other" in families
    assert metrics.family("m3-x3-2024") == "m3-x3"  # known before the cap: kept
    assert metrics.family(f"m{MAX_FAMILIES + 5}-y") == "other"
    assert len(metrics._family_of) == MAX_MODEL_NAMES


def test_rejections_as_json_log_lines(tmp_path: Path, upstream: ReplayServer) -> None:

    db_path = tmp_path / "j.db"
    invoke(db_path, "init")
    token = new_org(db_path, "Acme")
    with running_proxy(
        db_path, f"http://127.0.0.1:{upstream.port}", monitor_log_json=True
    ) as proxy:
        client = openai_client(proxy.base_url, token, default_query=None)
        with pytest.raises(openai.BadRequestError):
            client.with_options(default_headers={"X-Monitor-Tags": "team=a;env=b"}).models.list()
        time.sleep(0.3)
        lines = [json.loads(line) for line in proxy.log().splitlines() if line.startswith("{")]
    refused = [entry for entry in lines if entry.get("event") == "rejected"]
    assert len(refused) == 1, lines
    assert refused[0]["reason"] == "invalid_monitor_header"
    assert refused[0]["status"] == 400
    assert refused[0]["token_prefix"] == token[:10]
    assert refused[0]["level"] == "warning"


def test_a_flood_of_refusals_is_counted_but_not_all_logged(
    tmp_path: Path, upstream: ReplayServer
) -> None:
    """A client hammering with a bad token: every refusal counted, at most 20 lines a
    second logged, and the next line says how many were held back."""
    db_path = tmp_path / "f.db"
    invoke(db_path, "init")
    port = free_port()
    with running_proxy(
        db_path, f"http://127.0.0.1:{upstream.port}", monitor_metrics_port=port
    ) as proxy:
        with httpx.Client(base_url=proxy.base_url) as client:
            started = time.monotonic()
            for _ in range(60):
                assert client.get("/models").status_code == 401
            assert time.monotonic() - started < 1.0, "too slow to flood within a second"
            time.sleep(1.1)
            assert client.get("/models").status_code == 401
        text = scrape(port)
        log = proxy.log()
    reason = {"reason": "invalid_monitor_token"}
    assert metric(text, "llm_monitor_rejected_requests_total", **reason) == 61
    logged = log.count("llm-monitor: refused GET")
    assert 20 <= logged <= 41, logged  # the flood may straddle two seconds
    held = re.findall(r"(\d+) more refused requests were not logged", log)
    assert held and logged + sum(map(int, held)) == 61


def test_the_refusal_log_throttle() -> None:
    now = [100.0]
    throttle = Throttle(per_second=3, clock=lambda: now[0])
    assert [throttle.allow() for _ in range(5)] == [True, True, True, False, False]
    now[0] += 1
    assert throttle.allow() and throttle.take_held() == 2 and throttle.take_held() == 0


def dead_port() -> int:
    """A port nothing listens on (connections are refused)."""
    return free_port()


def test_unreachable_provider_gets_each_sdk_its_own_error(tmp_path: Path) -> None:

    db_path = tmp_path / "u.db"
    invoke(db_path, "init")
    token = new_org(db_path, "Acme")
    upstream = f"http://127.0.0.1:{dead_port()}"
    with running_proxy(db_path, upstream, providers=("openai", "anthropic", "gemini")) as proxy:
        with pytest.raises(openai.APIStatusError) as caught:
            openai_client(proxy.base_url, token).chat.completions.create(**CHAT["request"]["body"])
        assert caught.value.status_code == 502
        assert caught.value.code == "upstream_unreachable"
        assert "could not reach the provider" in caught.value.message

        claude = anthropic.Anthropic(
            base_url=proxy.url("anthropic"),
            api_key="sk-ant-test",
            max_retries=0,
            default_headers={"X-Monitor-Token": token},
        )
        with pytest.raises(anthropic.APIStatusError) as caught_a:
            claude.messages.create(
                model="claude-sonnet-4-5",
                max_tokens=10,
                messages=[{"role": "user", "content": "hi"}],
            )
        assert caught_a.value.status_code == 502
        assert "could not reach the provider" in str(caught_a.value)

        gemini = genai.Client(
            api_key="AIza-test",
            http_options=genai_types.HttpOptions(
                base_url=proxy.url("gemini"),
                headers={"X-Monitor-Token": token},
                retry_options=genai_types.HttpRetryOptions(attempts=1),
            ),
        )
        with pytest.raises(genai_errors.ServerError) as caught_g:
            gemini.models.generate_content(model="gemini-2.5-flash", contents="hi")
        assert caught_g.value.code == 502
        assert "could not reach the provider" in str(caught_g.value)

        found = wait_for_rows(db_path, "1", count=3)
    assert [r["outcome"] for r in found] == ["upstream_error"] * 3
    assert all(r["status"] is None for r in found)


class Silent:
    """A provider that accepts connections and reads requests, and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


def test_silent_provider_gets_a_504_in_the_providers_shape(tmp_path: Path) -> None:

    db_path = tmp_path / "t.db"
    invoke(db_path, "init")
    token = new_org(db_path, "Acme")
    silent = Silent()
    try:
        with running_proxy(db_path, f"http://127.0.0.1:{silent.port}", tcp_timeout=2) as proxy:
            with pytest.raises(openai.APIStatusError) as caught:
                openai_client(proxy.base_url, token).chat.completions.create(
                    **CHAT["request"]["body"]
                )
            assert caught.value.status_code == 504
            assert caught.value.code == "upstream_timeout"
            found = wait_for_rows(db_path, "1")
    finally:
        silent.close()
    assert found[0]["outcome"] == "upstream_error"
    assert "upstream silent" in found[0]["error"]


@pytest.mark.slow
def test_sigterm_drains_twenty_streams(tmp_path: Path, upstream: ReplayServer) -> None:
    """SIGTERM while 20 streams run: no new connection is accepted, and every stream
    finishes intact with an ok row."""

    db_path = tmp_path / "d.db"
    invoke(db_path, "init")
    token = new_org(db_path, "Acme")
    replies = [Reply.from_recording(STREAM, seed=i, delay=0.15) for i in range(20)]
    for reply in replies:
        upstream.reply(reply)
    expected = json.loads(
        STREAM["response"]["body_text"].split("data: ")[1].split("\n")[0]
    )  # the first chunk, to compare ids
    with running_proxy(db_path, f"http://127.0.0.1:{upstream.port}") as proxy:
        client = openai_client(proxy.base_url, token)
        started = threading.Barrier(21)

        def stream() -> list:
            chunks = []
            response = client.chat.completions.create(**STREAM["request"]["body"])
            started.wait()
            for chunk in response:
                chunks.append(chunk)
            return chunks

        with ThreadPoolExecutor(20) as pool:
            futures = [pool.submit(stream) for _ in range(20)]
            try:
                started.wait(20)
            except threading.BrokenBarrierError:
                failed = [e for f in futures if f.done() and (e := f.exception()) is not None]
                raise AssertionError(f"not every stream started; failures: {failed}") from None
            proxy.process.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            with pytest.raises(OSError):  # the listener is closed
                socket.create_connection(("127.0.0.1", proxy.port), 1).close()
            results = [f.result(30) for f in futures]
        assert proxy.process.wait(30) == 0
    for chunks in results:
        assert chunks[0].id == expected["id"]
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 10
    found = wait_for_rows(db_path, "1", count=20)
    assert len(found) == 20
    assert {r["outcome"] for r in found} == {"ok"}
    assert {r["output_tokens"] for r in found} == {10}


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("team=a;env=b", "key=value pairs separated by commas"),
        ("team=a,team=b", "'team' is given twice"),
        (",".join(f"k{i}=v" for i in range(21)), "has 21 tags; at most 20"),
        ("team=" + "x" * 129, "longer than 128 characters"),
    ],
)
def test_tags_refused_with_the_reason(value: str, says: str) -> None:
    with pytest.raises(BadMonitorHeader, match=re.escape(says)):
        parse_tags(value)


def test_twenty_tags_and_values_of_128_characters_pass() -> None:
    assert len(json.loads(parse_tags(",".join(f"k{i}=v" for i in range(20))))) == 20
    assert json.loads(parse_tags("team=" + "x" * 128))["team"] == "x" * 128
