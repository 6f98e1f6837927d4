"""Traffic for `llm-monitor demo`: a few hundred varied requests sent through the proxy.

The dashboard needs something to show before any service points at the proxy: three
providers with several models each (one without a price), JSON answers and streams, users,
tags, a few errors and organisations of different sizes. The requests go through the
proxy's listeners, with httpx as any service would send them, to the local stand-in
(`llm_monitor.demo.standin`), which answers them; the provider keys are fake. The same seed
plans the same requests.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import httpx

from llm_monitor.demo.standin import STATUS_HEADER
from llm_monitor.proxy.addon import TAGS_HEADER, TOKEN_HEADER, USER_HEADER

PROVIDERS = ("openai", "anthropic", "gemini")
# Not in pricing/openai.json (and not a dated snapshot of a priced model): its rows stay
# unpriced, so the dashboard's "models without a price" has something to show.
UNPRICED_MODEL = "gpt-4o-mini-2099-preview"
ERROR_SHARE = 0.04  # of requests sent with X-Standin-Status
UNPRICED_SHARE = 0.02
ERROR_STATUSES = (429, 429, 500, 400)
STREAM_SHARE = 0.4

# Weighted choices: (value, weight). Every model but UNPRICED_MODEL is in pricing/*.json.
PROVIDER_WEIGHTS = (("openai", 5), ("anthropic", 3), ("gemini", 2))
MODELS: dict[str, tuple[tuple[str, int], ...]] = {
    "openai": (
        ("gpt-5-mini", 5),
        ("gpt-4.1-mini", 4),
        ("gpt-4o-mini", 4),
        ("gpt-5.5", 2),
        ("gpt-5-nano", 2),
        ("o4-mini", 1),
    ),
    "anthropic": (("claude-haiku-4-5", 5), ("claude-sonnet-4-6", 4), ("claude-opus-4-6", 1)),
    "gemini": (
        ("gemini-2.5-flash", 5),
        ("gemini-2.5-flash-lite", 3),
        ("gemini-3.5-flash", 2),
        ("gemini-2.5-pro", 1),
    ),
}
EMBEDDING_MODEL = "text-embedding-3-small"
USERS = (("alice", 5), ("bob", 3), ("carol", 2), ("svc-batch", 4), ("svc-search", 3), (None, 2))
FEATURES = (("chat", 5), ("search", 4), ("summarise", 3), ("classify", 2), ("extract", 2))
ENVIRONMENTS = (("prod", 8), ("staging", 2))

# Fake keys, each in its provider's own header: the proxy passes them on untouched.
AUTH_HEADERS = {
    "openai": {"Authorization": "Bearer sk-demo-llm-monitor-not-a-real-key"},
    "anthropic": {
        "x-api-key": "sk-ant-demo-llm-monitor-not-a-real-key",
        "anthropic-version": "2023-06-01",
    },
    "gemini": {"x-goog-api-key": "AIza-demo-llm-monitor-not-a-real-key"},
}

PARAGRAPHS = (
    "Order 4471 shipped on Monday from the Rotterdam warehouse. The customer reports that "
    "two of the six boxes arrived with crushed corners and asks for a partial refund, or a "
    "replacement of the damaged parts before the installation date at the end of the month.",
    "Quarterly revenue grew eleven percent, led by the subscription tier, while hardware "
    "sales fell for the third quarter in a row. Churn in the small-business segment rose "
    "slightly after the price change; enterprise renewals were above plan.",
    "The incident began at 14:02 UTC when a configuration push disabled connection pooling "
    "on the billing database. Latency climbed until the on-call engineer rolled the change "
    "back at 14:37. No data was lost; 212 invoices were delayed by up to an hour.",
    "Candidates for the data engineering role should know SQL well, have run pipelines in "
    "production, and be able to explain a trade-off to people who do not write code. "
    "Experience with streaming systems is a plus; the team works across three time zones.",
    "The new return policy gives customers sixty days instead of thirty, but only for items "
    "bought directly from the online store. Marketplace sellers keep their own policies, "
    "which the product page must state next to the price.",
)
# Long enough (about 1,500 tokens) for the providers' prompt caches to take part.
SYSTEM_PROMPT = "You are the support assistant of Acme Ltd. House rules follow.\n\n" + (
    "\n\n".join(PARAGRAPHS * 3)
)
TASKS = {
    "chat": "Answer the customer's question using the notes below.\n\n{document}\n\n"
    "Question: what happens next?",
    "search": "Which of these passages answer the query 'refund policy'?\n\n{document}",
    "summarise": "Summarise the following in three sentences.\n\n{document}",
    "classify": "Label the text as billing, shipping, hiring or incident.\n\n{document}",
    "extract": "List every number in the text with what it counts.\n\n{document}",
}


@dataclass
class TrafficReport:
    """What send_traffic sent and how it was answered."""

    sent: int = 0
    ok: int = 0  # a 2xx answer, read to its end
    errors: int = 0  # an error status (asked for, or the proxy's own)
    failed: int = 0  # no answer at all (the proxy unreachable, a connection cut)
    by_provider: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PlannedRequest:
    provider: str
    model: str
    url: str
    headers: dict[str, str]
    body: dict[str, Any]
    streamed: bool


def _pick(rng: random.Random, weighted: Sequence[tuple[Any, int]]) -> Any:
    values, weights = zip(*weighted, strict=True)
    return rng.choices(values, weights)[0]


def _document(rng: random.Random) -> str:
    return "\n\n".join(rng.choices(PARAGRAPHS, k=rng.randint(1, 6)))


def _openai(
    rng: random.Random, base: str, model: str, prompt: str, cached_system: bool
) -> tuple[str, dict[str, Any], bool]:
    """Chat completions mostly; some embeddings and Responses calls."""
    kind = rng.random() if model != UNPRICED_MODEL else 0.0
    streamed = rng.random() < STREAM_SHARE
    if kind > 0.9:
        inputs = rng.choices(PARAGRAPHS, k=rng.randint(1, 6))
        body: dict[str, Any] = {"model": EMBEDDING_MODEL, "input": inputs}
        body["encoding_format"] = rng.choice(("float", "base64"))
        return f"{base}/v1/embeddings", body, False
    if kind > 0.8:
        body = {"model": model, "input": prompt, "stream": streamed}
        if cached_system:
            body["instructions"] = SYSTEM_PROMPT
        if model.startswith("gpt-5"):
            body["reasoning"] = {"effort": rng.choice(("low", "medium"))}
        return f"{base}/v1/responses", body, streamed
    messages = [{"role": "user", "content": prompt}]
    if cached_system:
        messages.insert(0, {"role": "system", "content": SYSTEM_PROMPT})
    body = {"model": model, "messages": messages}
    if rng.random() < 0.3:
        body["max_completion_tokens"] = rng.choice((64, 256, 1024))
    if model.startswith(("gpt-5", "o")) and rng.random() < 0.5:
        body["reasoning_effort"] = rng.choice(("minimal", "low", "medium", "high"))
    if streamed:
        body["stream"] = True
        if rng.random() < 0.5:  # the others leave it to the proxy to ask for usage
            body["stream_options"] = {"include_usage": True}
    return f"{base}/v1/chat/completions", body, streamed


def _anthropic(
    rng: random.Random, base: str, model: str, prompt: str, cached_system: bool
) -> tuple[str, dict[str, Any], bool]:
    streamed = rng.random() < STREAM_SHARE
    messages: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
    body: dict[str, Any] = {"model": model, "max_tokens": rng.choice((256, 512, 1024))}
    if cached_system:
        cached = {"type": "text", "text": SYSTEM_PROMPT, "cache_control": {"type": "ephemeral"}}
        body["system"] = [cached]
        if rng.random() < 0.6:  # a later turn of the conversation: the prefix is read back
            messages += [
                {"role": "assistant", "content": "Noted. What else should I look at?"},
                {"role": "user", "content": "The same notes, from the customer's side."},
            ]
    if model != "claude-haiku-4-5" and rng.random() < 0.3:
        body["thinking"] = {"type": "enabled", "budget_tokens": 1024}
        body["max_tokens"] = 2048
    body["messages"] = messages
    if streamed:
        body["stream"] = True
    return f"{base}/v1/messages", body, streamed


def _gemini(
    rng: random.Random, base: str, model: str, prompt: str, cached_system: bool
) -> tuple[str, dict[str, Any], bool]:
    streamed = rng.random() < STREAM_SHARE
    body: dict[str, Any] = {"contents": [{"role": "user", "parts": [{"text": prompt}]}]}
    if cached_system:
        body["systemInstruction"] = {"parts": [{"text": SYSTEM_PROMPT}]}
    if rng.random() < 0.3:
        body["generationConfig"] = {"maxOutputTokens": rng.choice((256, 1024, 4096))}
    url = f"{base}/v1beta/models/{model}:generateContent"
    if streamed:
        # SDKs ask for SSE; without alt=sse Gemini streams one JSON array.
        query = "?alt=sse" if rng.random() < 0.8 else ""
        url = f"{base}/v1beta/models/{model}:streamGenerateContent{query}"
    return url, body, streamed


_BUILDERS = {"openai": _openai, "anthropic": _anthropic, "gemini": _gemini}


def plan_traffic(
    endpoints: dict[str, str], tokens: list[str], *, requests: int = 300, seed: int = 0
) -> list[PlannedRequest]:
    """The requests send_traffic sends, in order; the same arguments give the same plan."""
    unknown = sorted(set(endpoints) - set(PROVIDERS))
    if unknown or not endpoints:
        raise ValueError(f"endpoints must name some of {', '.join(PROVIDERS)}; got {unknown}")
    if not tokens:
        raise ValueError("at least one monitor token is needed")
    if requests < 0:
        raise ValueError("requests must be 0 or more")
    rng = random.Random(seed)
    providers = [(name, weight) for name, weight in PROVIDER_WEIGHTS if name in endpoints]
    # Errors and the unpriced model at chosen places, so that even a short run has them.
    errors = max(1, round(requests * ERROR_SHARE)) if requests >= 20 else 0
    unpriced = max(1, round(requests * UNPRICED_SHARE)) if requests >= 10 else 0
    if "openai" not in endpoints:
        unpriced = 0
    special = rng.sample(range(requests), errors + unpriced)
    error_at, unpriced_at = set(special[:errors]), set(special[errors:])
    # Organisations of different sizes: each token sends half as much as the one before.
    token_weights = [(token, 2.0**-i) for i, token in enumerate(tokens)]
    plan = []
    for index in range(requests):
        provider = "openai" if index in unpriced_at else _pick(rng, providers)
        model = UNPRICED_MODEL if index in unpriced_at else _pick(rng, MODELS[provider])
        feature = _pick(rng, FEATURES)
        prompt = TASKS[feature].format(document=_document(rng))
        cached_system = rng.random() < 0.25
        base = endpoints[provider].rstrip("/")
        url, body, streamed = _BUILDERS[provider](rng, base, model, prompt, cached_system)
        headers = {TOKEN_HEADER: _pick(rng, token_weights), **AUTH_HEADERS[provider]}
        if (user := _pick(rng, USERS)) is not None:
            headers[USER_HEADER] = user
        if rng.random() < 0.9:
            headers[TAGS_HEADER] = f"feature={feature},env={_pick(rng, ENVIRONMENTS)}"
        if index in error_at:
            headers[STATUS_HEADER] = str(rng.choice(ERROR_STATUSES))
        plan.append(
            PlannedRequest(provider, body.get("model", model), url, headers, body, streamed)
        )
    return plan


def _send(client: httpx.Client, request: PlannedRequest) -> int | None:
    """The answer's status, its body read to the end as a client would; None if none came."""
    try:
        with client.stream("POST", request.url, json=request.body, headers=request.headers) as r:
            for _ in r.iter_raw():
                pass
            return r.status_code
    except httpx.HTTPError:
        return None


def send_traffic(
    endpoints: dict[str, str],
    tokens: list[str],
    requests: int = 300,
    seed: int = 0,
    concurrency: int = 4,
) -> TrafficReport:
    """Send `requests` planned requests to the proxy's listeners, `concurrency` at a time.

    `endpoints` maps provider names (openai, anthropic, gemini) to a listener's base URL,
    e.g. `http://127.0.0.1:8080`; `tokens` are monitor tokens, one per organisation.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be 1 or more")
    plan = plan_traffic(endpoints, tokens, requests=requests, seed=seed)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with (
        httpx.Client(timeout=30, limits=limits) as client,
        ThreadPoolExecutor(concurrency, thread_name_prefix="llm-monitor-demo") as pool,
    ):
        statuses = list(pool.map(partial(_send, client), plan))
    report = TrafficReport(sent=len(plan))
    report.by_provider = dict(Counter(request.provider for request in plan))
    for status in statuses:
        if status is None:
            report.failed += 1
        elif 200 <= status < 300:
            report.ok += 1
        else:
            report.errors += 1
    return report
