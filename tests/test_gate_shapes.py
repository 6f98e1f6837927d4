"""What the gate reads and answers through a real `llm-monitor proxy`: a Gemini request's
`generationConfig.maxOutputTokens` (and thinking budget) bounds its reservation, and an
OpenAI client refused by a rate limit or a budget gets OpenAI's own 429 shape (`type`
`requests` or `tokens` with code `rate_limit_exceeded`; `insufficient_quota` for a
spending limit), with Retry-After; a Gemini one Google's `RESOURCE_EXHAUSTED`. The
upstream never sees a refused request."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from llm_monitor.proxy.providers import provider_named
from llm_monitor.proxy.providers.gemini import max_output
from tests.conftest import API_KEY, invoke, new_org
from tests.proxy import running_proxy
from tests.replay import ReplayServer, Reply, load_recording

GEMINI = "gemini/generate_json_text_gemini-2.5-flash.json"
OPENAI = "openai/chat_json_text_gpt-4o.json"


def test_max_output_reads_camel_and_snake_case() -> None:
    assert max_output({"contents": []}) is None
    assert max_output({"generationConfig": {"temperature": 0}}) is None
    assert max_output({"generationConfig": {"maxOutputTokens": 100}}) == 100
    assert max_output({"generation_config": {"max_output_tokens": 100}}) == 100
    config = {"maxOutputTokens": 100, "candidateCount": 3}
    assert max_output({"generationConfig": config}) == 300
    config = {"maxOutputTokens": 100, "thinkingConfig": {"thinkingBudget": 900}}
    assert max_output({"generationConfig": config}) == 1000
    config = {"maxOutputTokens": 100, "thinkingConfig": {"thinkingBudget": -1}}  # dynamic
    assert max_output({"generationConfig": config}) == 100
    assert max_output({"generationConfig": {"maxOutputTokens": "lots"}}) is None
    assert max_output([1, 2]) is None
    # A spelling set to null is not set (a request's fields come as None when absent too).
    snake = {"max_output_tokens": 100}
    assert max_output({"generationConfig": None, "generation_config": snake}) == 100


def until_ready(send: Callable[[], httpx.Response]) -> httpx.Response:
    """A worker refuses with `*_not_ready` until its first lease (a fraction of a second)."""
    deadline = time.monotonic() + 10
    while True:
        response = send()
        code = response.json().get("error", {}) if response.status_code == 429 else {}
        if "not_ready" not in json.dumps(code):
            return response
        assert time.monotonic() < deadline, response.text
        time.sleep(0.1)


@pytest.mark.slow
def test_gemini_bounds_and_openai_429_shapes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The proxy's clock starts a minute now, so that the rate limit's minute does not
    # turn over during the test.
    monkeypatch.setenv("LLM_MONITOR_CLOCK_OFFSET", str(-(time.time() % 60) + 0.5))
    db = tmp_path / "llm-monitor.db"
    invoke(db, "init")
    acme, beta = new_org(db, "Acme"), new_org(db, "Beta")
    # Acme: $0.01 a day. gemini-2.5-flash output is $2.50 per 1M tokens: the default bound
    # (32,768 tokens, $0.08) cannot be afforded, 200 tokens ($0.0005) can.
    invoke(db, "budgets", "set", "--org", "Acme", "--period", "day", "--usd", "0.01")
    # Beta: 2 requests and 2,000 tokens a minute, and $0.50 a day.
    invoke(db, "limits", "set", "--org", "Beta", "--rpm", "2", "--tpm", "2000")
    invoke(db, "budgets", "set", "--org", "Beta", "--period", "day", "--usd", "0.5")
    gemini = load_recording(GEMINI)
    openai = load_recording(OPENAI)
    with (
        ReplayServer() as upstream,
        running_proxy(
            db, f"http://127.0.0.1:{upstream.port}", providers=("openai", "gemini")
        ) as proxy,
    ):

        def to_gemini(config: dict | None) -> httpx.Response:
            body = dict(gemini["request"]["body"])
            if config is not None:
                body["generationConfig"] = config
            return httpx.post(
                f"{proxy.url('gemini')}{gemini['request']['path']}",
                json=body,
                headers={"X-Monitor-Token": acme, "x-goog-api-key": API_KEY},
            )

        def to_openai(max_tokens: int) -> httpx.Response:
            body = {**openai["request"]["body"], "max_tokens": max_tokens}
            return httpx.post(
                f"{proxy.base_url}/chat/completions",
                json=body,
                headers={"X-Monitor-Token": beta, "Authorization": f"Bearer {API_KEY}"},
            )

        refused = until_ready(lambda: to_gemini(None))
        assert refused.status_code == 429
        error = refused.json()["error"]
        assert (error["code"], error["status"]) == (429, "RESOURCE_EXHAUSTED")
        assert error["details"][0]["reason"] == "BUDGET_EXCEEDED"
        thinking = {"maxOutputTokens": 200, "thinkingConfig": {"thinkingBudget": 8000}}
        assert to_gemini(thinking).status_code == 429  # 8,200 tokens: $0.0205
        upstream.reply(Reply.from_recording(gemini))
        assert to_gemini({"maxOutputTokens": 200}).status_code == 200
        assert upstream.take_received().json()["generationConfig"] == {"maxOutputTokens": 200}

        def refusal(response: httpx.Response) -> tuple[int, str, str, str | None]:
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}
            assert error["param"] is None and "LLM Monitor" in error["message"]
            return (
                response.status_code,
                error["type"],
                error["code"],
                response.headers.get("retry-after"),
            )

        # 100,000 tokens at gpt-4o's $10 per 1M: $1, over the budget (checked first).
        status, kind, code, retry = refusal(until_ready(lambda: to_openai(100_000)))
        assert (status, kind, code) == (429, "insufficient_quota", "budget_exceeded")
        assert int(retry) > 1
        assert refusal(to_openai(5_000))[:3] == (429, "tokens", "rate_limit_exceeded")
        for _ in range(2):
            upstream.reply(Reply.from_recording(openai))
            assert to_openai(10).status_code == 200
        status, kind, code, retry = refusal(to_openai(10))
        assert (status, kind, code) == (429, "requests", "rate_limit_exceeded")
        assert 1 <= int(retry) <= 60
        received = [upstream.take_received() for _ in range(2)]
        assert all(r.json()["max_tokens"] == 10 for r in received)
        assert upstream.received.empty()  # no refused request reached it


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (413, "request_too_large"),
        (429, "rate_limit_error"),
        (502, "api_error"),
        (504, "api_error"),
    ],
)
def test_anthropic_refusals_carry_the_type_anthropic_sends(status: int, error_type: str) -> None:
    """The SDK picks its exception class by status, and callers branch on `error.type`."""
    body = json.loads(provider_named("anthropic").rejection(status, "No.", "budget_exceeded"))
    assert body == {
        "type": "error",
        "error": {"type": error_type, "message": "No.", "code": "budget_exceeded"},
    }
