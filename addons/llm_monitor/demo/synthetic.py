"""Synthetic usage: a large, realistic `usage` table to time dashboard queries against.

`generate` fills a database opened with `open_db` with organisations, monitor tokens and
usage rows shaped like the proxy's own: the same paths, outcomes, token columns and
`raw_usage` objects per provider, priced with the real price book through
`llm_monitor.money.costs`, exactly as the recorder prices them. Everything random comes from
`random.Random` seeded per hour, so a seed (and `end`) always gives the same rows.
"""

from __future__ import annotations

import bisect
import datetime as dt
import itertools
import json
import math
import random
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from llm_monitor.accounts.tokens import display_prefix, hash_token, new_token
from llm_monitor.money.costs import PriceBook, Unpriced, cost_usd, entry_label, load_price_book
from llm_monitor.money.prices import PriceEntry
from llm_monitor.money.sync import install_defaults
from llm_monitor.store import rollups
from llm_monitor.usage import utc_timestamp

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
BATCH = 50_000  # rows per transaction (whole hours: a few more)

UNPRICED_SHARE = 0.01  # requests to a fine-tuned model, which has no price
ERROR_SHARE = 0.03  # before each organisation's own factor (0.6 to 1.4)
# (status, outcome, weight, median latency ms); status None: no response at all.
ERRORS: tuple[tuple[int | None, str, float, float], ...] = (
    (429, "provider_error", 0.40, 120),
    (400, "provider_error", 0.20, 180),
    (500, "provider_error", 0.17, 2_000),
    (408, "provider_error", 0.06, 30_000),
    (None, "upstream_error", 0.10, 5_000),
    (None, "client_disconnected", 0.07, 8_000),
)
# The error code the proxy reads from each provider's error body.
ERROR_CODES: dict[str, dict[int, tuple[str, ...]]] = {
    "openai": {
        429: ("rate_limit_exceeded", "insufficient_quota"),
        400: ("context_length_exceeded", "unsupported_parameter", "invalid_request_error"),
        500: ("server_error",),
        408: ("timeout",),
    },
    "anthropic": {
        429: ("rate_limit_error",),
        400: ("invalid_request_error",),
        500: ("api_error",),
        408: ("timeout_error",),
    },
    "gemini": {
        429: ("RESOURCE_EXHAUSTED",),
        400: ("INVALID_ARGUMENT", "FAILED_PRECONDITION"),
        500: ("INTERNAL",),
        408: ("DEADLINE_EXCEEDED",),
    },
    "xai": {
        429: ("rate_limit_exceeded",),
        400: ("invalid_request_error",),
        500: ("internal_error",),
        408: ("timeout",),
    },
}
_ERROR_CUM = list(itertools.accumulate(e[2] / sum(e[2] for e in ERRORS) for e in ERRORS))
NO_RESPONSE_ERRORS = {
    "upstream_error": ("peer closed connection", "[Errno 104] Connection reset by peer"),
    "client_disconnected": ("Client disconnected.",),
}

COLUMNS = (
    "ts",
    "org_id",
    "token_id",
    "provider",
    "method",
    "path",
    "model",
    "response_model",
    "status",
    "outcome",
    "streamed",
    "usage_injected",
    "billable",
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "output_tokens",
    "reasoning_tokens",
    "total_tokens",
    "cost_usd",
    "priced",
    "latency_ms",
    "ttft_ms",
    "request_id",
    "user",
    "tags",
    "error",
    "raw_usage",
    "cost_basis",
    "unpriced_reason",
)
_INSERT = (
    f"insert into usage ({', '.join(f'[{c}]' for c in COLUMNS)}) "
    f"values ({', '.join('?' * len(COLUMNS))})"
)


@dataclass(frozen=True)
class GenerationReport:
    orgs: int
    tokens: int
    rows: int
    first_ts: str | None
    last_ts: str | None
    seconds: float


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A model as traffic uses it: its weight within its provider and how fast it is."""

    provider: str
    name: str  # the model asked for
    answered_as: str  # the `model` the provider answers with (a dated snapshot)
    weight: float
    kind: str  # "chat", "reasoning" or "embedding"
    ttft_ms: float  # median time to the first token
    ms_per_token: float


# Every model here is in the shipped price files (tests/test_synthetic.py checks it).
CATALOGUE: tuple[ModelSpec, ...] = (
    ModelSpec("openai", "gpt-4.1-mini", "gpt-4.1-mini-2025-04-14", 20, "chat", 350, 6),
    ModelSpec("openai", "gpt-4o-mini", "gpt-4o-mini-2024-07-18", 15, "chat", 350, 6),
    ModelSpec("openai", "gpt-5-mini", "gpt-5-mini-2025-08-07", 14, "reasoning", 500, 5),
    ModelSpec("openai", "gpt-4o", "gpt-4o-2024-08-06", 10, "chat", 450, 12),
    ModelSpec("openai", "gpt-5", "gpt-5-2025-08-07", 8, "reasoning", 700, 12),
    ModelSpec("openai", "gpt-4.1", "gpt-4.1-2025-04-14", 6, "chat", 450, 11),
    ModelSpec("openai", "gpt-5.1", "gpt-5.1-2025-11-13", 5, "reasoning", 650, 11),
    ModelSpec("openai", "gpt-5-nano", "gpt-5-nano-2025-08-07", 4, "reasoning", 400, 4),
    ModelSpec("openai", "o4-mini", "o4-mini-2025-04-16", 3, "reasoning", 600, 6),
    ModelSpec("openai", "text-embedding-3-small", "text-embedding-3-small", 12, "embedding", 60, 0),
    ModelSpec("openai", "text-embedding-3-large", "text-embedding-3-large", 3, "embedding", 90, 0),
    ModelSpec("anthropic", "claude-sonnet-4-5", "claude-sonnet-4-5-20250929", 35, "chat", 900, 14),
    ModelSpec("anthropic", "claude-haiku-4-5", "claude-haiku-4-5-20251001", 30, "chat", 500, 6),
    ModelSpec("anthropic", "claude-sonnet-4", "claude-sonnet-4-20250514", 12, "chat", 900, 14),
    ModelSpec("anthropic", "claude-3-5-haiku", "claude-3-5-haiku-20241022", 8, "chat", 500, 7),
    ModelSpec("anthropic", "claude-opus-4-5", "claude-opus-4-5-20251101", 6, "chat", 1200, 20),
    ModelSpec("anthropic", "claude-opus-4-1", "claude-opus-4-1-20250805", 4, "chat", 1500, 25),
    ModelSpec("gemini", "gemini-2.5-flash", "gemini-2.5-flash", 45, "reasoning", 450, 4),
    ModelSpec("gemini", "gemini-2.5-flash-lite", "gemini-2.5-flash-lite", 25, "chat", 300, 3),
    ModelSpec("gemini", "gemini-2.5-pro", "gemini-2.5-pro", 20, "reasoning", 1500, 9),
    ModelSpec(
        "gemini", "gemini-3.1-pro-preview", "gemini-3.1-pro-preview", 10, "reasoning", 1800, 10
    ),
    ModelSpec("xai", "grok-4-fast-non-reasoning", "grok-4-fast-non-reasoning", 30, "chat", 300, 4),
    ModelSpec("xai", "grok-code-fast-1", "grok-code-fast-1", 25, "reasoning", 400, 4),
    ModelSpec("xai", "grok-4-fast-reasoning", "grok-4-fast-reasoning", 20, "reasoning", 400, 4),
    ModelSpec("xai", "grok-4", "grok-4-0709", 15, "reasoning", 1500, 15),
    ModelSpec("xai", "grok-3-mini", "grok-3-mini", 10, "reasoning", 500, 6),
)
PROVIDER_WEIGHTS = {"openai": 0.45, "anthropic": 0.30, "gemini": 0.15, "xai": 0.10}

FIRST_NAMES = (
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy",
    "mallory", "niaj", "olivia", "peggy", "quinn", "rupert", "sybil", "trent", "uma",
    "victor", "wendy", "xavier", "yara", "zoe", "amir", "bea", "chen", "dara", "eli", "fatima",
)  # fmt: skip
FEATURES = (
    "search", "chat", "summarize", "support-bot", "classify", "extract", "codegen", "rag",
    "translate", "agent", "moderation", "email-drafts", "sql-assist", "reports",
)  # fmt: skip
TEAMS = ("platform", "growth", "data", "support", "ml", "web")
TOKEN_LABELS = ("default", "backend", "batch-jobs", "support-bot", "staging", "analytics")


def generate(
    db: Database,
    *,
    orgs: int = 50,
    days: int = 90,
    rows: int = 5_000_000,
    seed: int = 0,
    end: dt.datetime | None = None,
    org_ids: list[int] | None = None,
    progress: Callable[[int], None] | None = None,
) -> GenerationReport:
    """Add `rows` usage rows spread over the `days` before `end` (default: now, UTC).

    Creates `orgs` organisations (`org-01`...) with 1-5 monitor tokens each, or, given
    `org_ids`, uses those organisations and their live tokens and creates none.
    `progress` is called with the number of rows in each batch written.
    Rollups are rebuilt and ANALYZE run at the end.
    """
    if rows < 0 or days < 1 or (org_ids is None and orgs < 1) or org_ids == []:
        raise ValueError("rows must be >= 0, days >= 1 and there must be at least one org")
    started = time.perf_counter()
    end = end or dt.datetime.now(dt.UTC)
    end = end.replace(tzinfo=dt.UTC) if end.tzinfo is None else end.astimezone(dt.UTC)
    end_ms = int(end.timestamp() * 1000)
    start_ms = end_ms - days * DAY_MS
    setup = random.Random(f"{seed}/orgs")
    if org_ids is None:
        owners = _create_orgs(db, orgs, setup, start_ms)
    else:
        owners = _existing_orgs(db, org_ids)
    book = _price_book(db)
    priced_models = [m for m in CATALOGUE if book.lookup(m.provider, m.name, end.date())]
    if not priced_models:
        raise ValueError("the price book has no price for any model of the synthetic catalogue")
    profiles = [
        _profile(org_id, slug, tokens, rank, setup, priced_models)
        for rank, (org_id, slug, tokens) in enumerate(owners, 1)
    ]
    previous = {p: db.execute(f"pragma {p}").fetchone()[0] for p in ("synchronous", "cache_size")}
    db.execute("pragma synchronous=OFF")
    db.execute("pragma cache_size=-262144")  # 256 MiB
    first_ts = last_ts = None
    last_used: dict[int, str] = {}  # token id: its last row's ts
    try:
        hours = _hourly_counts(rows, start_ms, end_ms, seed)
        for batch in _batches(seed, start_ms, end_ms, profiles, book, hours):
            with db.atomic():
                db.conn.executemany(_INSERT, batch)
            first_ts = first_ts or batch[0][0]
            last_ts = batch[-1][0]
            last_used.update((row[2], row[0]) for row in batch)  # rows come in ts order
            if progress is not None:
                progress(len(batch))
        with db.atomic():
            db.conn.executemany(
                "update monitor_tokens set last_used_at = ? where id = ? "
                "and (last_used_at is null or last_used_at < ?)",
                [(ts, token_id, ts) for token_id, ts in last_used.items()],
            )
            rollups.rebuild(db)
        db.execute("analyze")
    finally:
        for pragma, value in previous.items():
            db.execute(f"pragma {pragma}={value}")
    db.execute("pragma wal_checkpoint(TRUNCATE)")
    return GenerationReport(
        orgs=len(profiles),
        tokens=sum(len(p.token_ids) for p in profiles),
        rows=rows,
        first_ts=first_ts,
        last_ts=last_ts,
        seconds=round(time.perf_counter() - started, 3),
    )


# Organisations and tokens.


def _create_orgs(
    db: Database, count: int, rng: random.Random, start_ms: int
) -> list[tuple[int, str, list[int]]]:
    """`org-01`... with 1-5 tokens each, all created before the first usage row."""
    width = max(2, len(str(count)))
    names = [f"org-{i:0{width}d}" for i in range(1, count + 1)]
    taken = sorted({r[0] for r in db.execute("select name from orgs")} & set(names))
    if taken:
        raise ValueError(
            f"organisation {taken[0]!r} already exists; pass org_ids= to add usage to "
            "existing organisations"
        )
    owners = []
    with db.atomic():
        for name in names:
            org_created = start_ms - int(rng.uniform(7, 365) * DAY_MS)
            org_id = (
                db["orgs"]
                .insert(
                    {
                        "name": name,
                        "email": f"ops@{name}.example",
                        "created_at": _ts(org_created),
                    }
                )
                .last_pk
            )
            token_ids = []
            for label in rng.sample(TOKEN_LABELS, rng.randint(1, 5)):
                token = new_token()  # secret and random: nobody can use a synthetic token
                created = rng.randint(org_created, start_ms)
                token_ids.append(
                    db["monitor_tokens"]
                    .insert(
                        {
                            "org_id": org_id,
                            "token_hash": hash_token(token),
                            "prefix": display_prefix(token),
                            "label": label,
                            "created_at": _ts(created),
                        }
                    )
                    .last_pk
                )
            owners.append((org_id, name, token_ids))
    return owners


def _existing_orgs(db: Database, org_ids: Sequence[int]) -> list[tuple[int, str, list[int]]]:
    """The given organisations with their live tokens, for backfilling their history."""
    owners = []
    for org_id in org_ids:
        row = db.execute("select name from orgs where id = ?", [org_id]).fetchone()
        if row is None:
            raise ValueError(f"no organisation with id {org_id}")
        token_ids = [
            r[0]
            for r in db.execute(
                "select id from monitor_tokens where org_id = ? and revoked_at is null order by id",
                [org_id],
            )
        ]
        if not token_ids:
            raise ValueError(f"organisation {row[0]!r} has no live monitor token")
        slug = re.sub(r"[^a-z0-9]+", "-", row[0].lower()).strip("-") or f"org-{org_id}"
        owners.append((org_id, slug, token_ids))
    return owners


def _price_book(db: Database) -> PriceBook:
    """The database's prices, as the recorder reads them; the defaults if it has none."""
    if not db.execute("select count(*) from prices").fetchone()[0]:
        install_defaults(db)
    return load_price_book(db)


# Each organisation's habits.


@dataclass(frozen=True, slots=True)
class _Profile:
    org_id: int
    token_ids: list[int]
    token_cum: list[float]
    models: list[ModelSpec]
    model_cum: list[float]
    fine_tune: ModelSpec
    users: list[str | None]
    user_cum: list[float]
    tags: list[str | None]
    tag_cum: list[float]
    stream_share: float
    error_share: float
    input_scale: float


def _profile(
    org_id: int,
    slug: str,
    token_ids: list[int],
    rank: int,
    rng: random.Random,
    priced_models: list[ModelSpec],
) -> _Profile:
    """Skewed but varied: some orgs use one provider, some all four, a few models of each
    (popular ones more often), each org its own mix."""
    offering = {p for p in PROVIDER_WEIGHTS if any(m.provider == p for m in priced_models)}
    providers = [p for p in PROVIDER_WEIGHTS if p in offering and rng.random() < 0.7] or [
        rng.choice(sorted(offering))
    ]
    models: list[ModelSpec] = []
    weights: list[float] = []
    for provider in providers:
        offered = [m for m in priced_models if m.provider == provider]
        chosen: list[ModelSpec] = []
        for _ in range(min(len(offered), rng.randint(2, 5))):
            m = _pick(rng, offered, _cumulative([o.weight for o in offered]))
            offered.remove(m)
            chosen.append(m)
        own = _normalise([m.weight * rng.lognormvariate(0, 0.6) for m in chosen])
        share = PROVIDER_WEIGHTS[provider] * rng.lognormvariate(0, 0.5)
        models += chosen
        weights += [w * share for w in own]
    suffix = "".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=8))
    fine_tune_name = f"ft:gpt-4.1-mini-2025-04-14:{slug}::{suffix}"
    fine_tune = ModelSpec("openai", fine_tune_name, fine_tune_name, 0, "chat", 400, 7)

    pool = rng.sample(FIRST_NAMES, min(len(FIRST_NAMES), rng.randint(3, 12) + 40 // rank))
    users: list[str | None] = [None, *(f"{name}@{slug}.example" for name in pool)]
    none_share = rng.uniform(0.15, 0.6)
    user_weights = [none_share, *_zipf(len(pool), 1.0, 1 - none_share)]

    tags: list[str | None] = [None]
    tag_weights = [rng.uniform(0.1, 0.5)]  # untagged
    features = rng.sample(FEATURES, rng.randint(2, 7))
    for feature, weight in zip(features, _zipf(len(features), 1.0), strict=True):
        team = rng.choice(TEAMS) if rng.random() < 0.4 else None
        for env, env_share in (("prod", 0.85), ("staging", 0.15)):
            tags.append(_tags_json({"env": env, "feature": feature, "team": team}))
            tag_weights.append((1 - tag_weights[0]) * weight * env_share)
    return _Profile(
        org_id=org_id,
        token_ids=token_ids,
        token_cum=_cumulative(_zipf(len(token_ids), 1.2)),
        models=models,
        model_cum=_cumulative(weights),
        fine_tune=fine_tune,
        users=users,
        user_cum=_cumulative(user_weights),
        tags=tags,
        tag_cum=_cumulative(tag_weights),
        stream_share=rng.uniform(0.15, 0.5),
        error_share=ERROR_SHARE * rng.uniform(0.6, 1.4),
        input_scale=rng.lognormvariate(0, 0.4),
    )


def _tags_json(tags: dict[str, str | None]) -> str:
    """As the proxy stores `X-Monitor-Tags` (`parse_tags`): a JSON object, keys sorted."""
    return json.dumps(dict(sorted((k, v) for k, v in tags.items() if v)), ensure_ascii=False)


def _zipf(n: int, s: float, total: float = 1.0) -> list[float]:
    return [w * total for w in _normalise([1 / (k**s) for k in range(1, n + 1)])]


def _normalise(weights: list[float]) -> list[float]:
    total = sum(weights)
    return [w / total for w in weights]


def _cumulative(weights: list[float]) -> list[float]:
    cum, running = [], 0.0
    for w in weights:
        running += w
        cum.append(running)
    return [c / running for c in cum]


def _pick(rng: random.Random, items: Sequence[Any], cum: list[float]) -> Any:
    return items[min(bisect.bisect(cum, rng.random()), len(items) - 1)]


# When requests happen.


def _hourly_counts(rows: int, start_ms: int, end_ms: int, seed: int) -> list[tuple[int, int]]:
    """Rows per clock hour (UTC), summing to exactly `rows`: working hours and weekdays
    busier, traffic growing by 80% over the period, a little noise on every hour."""
    rng = random.Random(f"{seed}/hours")
    hours = range(start_ms - start_ms % HOUR_MS, end_ms, HOUR_MS)
    weights = []
    for hour_ms in hours:
        covered = (min(hour_ms + HOUR_MS, end_ms) - max(hour_ms, start_ms)) / HOUR_MS
        when = dt.datetime.fromtimestamp(hour_ms / 1000, dt.UTC)
        daily = 0.3 + math.exp(-(((when.hour - 14) / 4.5) ** 2))
        weekly = (1.0, 1.0, 1.0, 1.0, 0.92, 0.42, 0.38)[when.weekday()]
        growth = 1.8 ** ((hour_ms - start_ms) / (end_ms - start_ms))
        weights.append(covered * daily * weekly * growth * rng.lognormvariate(0, 0.12))
    total = sum(weights)
    exact = [rows * w / total for w in weights]
    counts = [int(x) for x in exact]
    # Largest remainders first, so the counts add up to `rows` exactly.
    by_remainder = sorted(range(len(exact)), key=lambda i: counts[i] - exact[i])
    for i in by_remainder[: rows - sum(counts)]:
        counts[i] += 1
    return [(h, c) for h, c in zip(hours, counts, strict=True) if c]


def _batches(
    seed: int,
    start_ms: int,
    end_ms: int,
    profiles: list[_Profile],
    book: PriceBook,
    hours: list[tuple[int, int]],
) -> Iterator[list[tuple[Any, ...]]]:
    """All rows in ts order, in batches of whole hours (BATCH rows or a few more).

    Each clock hour draws from its own random stream, seeded with the seed and the hour,
    so an hour's rows do not depend on how many rows came before it.
    """
    pricer = _Pricer(book)
    org_cum = _cumulative(_zipf(len(profiles), 1.1))  # a few big orgs (the first), a long tail
    batch: list[tuple[Any, ...]] = []
    for hour_ms, count in hours:
        rng = random.Random(f"{seed}/{hour_ms}")
        lo, hi = max(hour_ms, start_ms), min(hour_ms + HOUR_MS, end_ms)
        day = _ts(lo)[:10]
        for ms in sorted(rng.randrange(lo, hi) for _ in range(count)):
            batch.append(_request(rng, _pick(rng, profiles, org_cum), _ts(ms), day, pricer))
        if len(batch) >= BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _ts(ms: int) -> str:
    # The half millisecond keeps utc_timestamp's truncation from landing a millisecond early.
    return utc_timestamp((ms + 0.5) / 1000)


# What each request was.


_UNKNOWN, _TIERED = object(), object()


class _Pricer:
    """`PriceBook.lookup` and `cost_usd`, as in the recorder's `price_row`, with the
    look-up cached per model and day when the model has no long-context tier."""

    def __init__(self, book: PriceBook) -> None:
        self.book = book
        self._prices: dict[tuple[str, str, str], Any] = {}

    def price(self, provider: str, model: str, day: str, input_tokens: int) -> PriceEntry | None:
        key = (provider, model, day)
        price = self._prices.get(key, _UNKNOWN)
        if price is _UNKNOWN:
            on = dt.date.fromisoformat(day)
            low = self.book.lookup(provider, model, on, 0)
            high = self.book.lookup(provider, model, on, 2**62)
            price = self._prices[key] = low if low is high else _TIERED
        if price is _TIERED:
            return self.book.lookup(provider, model, dt.date.fromisoformat(day), input_tokens)
        return price

    def cost(
        self, provider: str, model: str, day: str, usage: _Usage
    ) -> tuple[float | None, int, str | None, str | None]:
        """(cost_usd, priced, cost_basis, unpriced_reason) of a row with usage."""
        input_tokens, cached, cache_write, cache_write_1h, output, reasoning, _, _ = usage
        price = self.price(provider, model, day, input_tokens)
        if price is None:
            return None, 0, None, "no_price"
        try:
            cost = cost_usd(
                price,
                input_tokens=input_tokens,
                cached_input_tokens=cached,
                cache_write_tokens=cache_write,
                cache_write_1h_tokens=cache_write_1h,
                output_tokens=output,
                reasoning_tokens=reasoning,
            )
        except Unpriced as e:
            return None, 0, None, e.reason
        return float(cost), 1, entry_label(price), None


def _spread(rng: random.Random, sigma: float) -> float:
    """A log-normal factor with median 1 (`gauss` is much faster than `lognormvariate`)."""
    return math.exp(rng.gauss(0.0, sigma))


def _count(rng: random.Random, median: float, sigma: float, lo: int, hi: int) -> int:
    return min(hi, max(lo, int(median * _spread(rng, sigma))))


def _request(
    rng: random.Random, org: _Profile, ts: str, day: str, pricer: _Pricer
) -> tuple[Any, ...]:
    spec = org.fine_tune if rng.random() < UNPRICED_SHARE else _pick(rng, org.models, org.model_cum)
    provider = spec.provider
    token_id = _pick(rng, org.token_ids, org.token_cum)
    user = _pick(rng, org.users, org.user_cum)
    tags = _pick(rng, org.tags, org.tag_cum)
    asked_stream = spec.kind != "embedding" and rng.random() < org.stream_share
    path = _path(rng, spec, asked_stream)
    # The proxy asks a chat-completions stream for its usage when the client did not.
    injected = int(asked_stream and path == "/v1/chat/completions" and rng.random() < 0.5)

    if rng.random() < org.error_share:
        status, outcome, _, median = _pick(rng, ERRORS, _ERROR_CUM)
        if status is None:
            error = rng.choice(NO_RESPONSE_ERRORS[outcome])
            request_id = None
        else:
            error = rng.choice(ERROR_CODES[provider][status])
            request_id = _request_id(rng, provider)
        latency = round(min(600_000.0, median * _spread(rng, 0.8)), 3)
        # No usage: nothing to bill after an error status or an unreachable upstream; a
        # client that hung up may still have been billed (cost unknown), as price_row says.
        priced = 0 if outcome == "client_disconnected" else None
        return (
            ts, org.org_id, token_id, provider, "POST", path, spec.name, None, status, outcome,
            0, injected, 1, None, None, None, None, None, None, None, None, priced,
            latency, None, request_id, user, tags, error, None,
            None, "usage_unseen" if priced == 0 else None,
        )  # fmt: skip

    usage = _usage(rng, spec, org.input_scale, path)
    input_tokens, cached, cache_write, cache_write_1h, output, reasoning, total, raw = usage
    cost, priced, basis, reason = pricer.cost(provider, spec.answered_as, day, usage)
    prefill = (spec.ttft_ms + input_tokens * 0.02) * _spread(rng, 0.35)
    thinking = (reasoning or 0) * spec.ms_per_token
    visible = ((output or 0) - (reasoning or 0)) * spec.ms_per_token * _spread(rng, 0.25)
    if asked_stream:
        ttft = round(prefill + thinking, 3)
        latency = round(ttft + visible, 3)
    else:
        ttft = None
        latency = round(prefill + thinking + visible, 3)
    return (
        ts, org.org_id, token_id, provider, "POST", path, spec.name, spec.answered_as, 200, "ok",
        int(asked_stream), injected, 1, input_tokens, cached, cache_write, cache_write_1h,
        output, reasoning, total, cost, priced, latency, ttft, _request_id(rng, provider),
        user, tags, None, raw, basis, reason,
    )  # fmt: skip


def _path(rng: random.Random, spec: ModelSpec, stream: bool) -> str:
    """The request path as the proxy stores it (credentials removed from the query)."""
    if spec.provider == "gemini":
        if stream:
            return f"/v1beta/models/{spec.name}:streamGenerateContent?alt=sse"
        return f"/v1beta/models/{spec.name}:generateContent"
    if spec.provider == "anthropic":
        return "/v1/messages?beta=true" if rng.random() < 0.1 else "/v1/messages"
    if spec.kind == "embedding":
        return "/v1/embeddings"
    if spec.provider == "openai" and spec.name.startswith(("gpt-5", "gpt-4.1", "o")):
        return "/v1/responses" if rng.random() < 0.3 else "/v1/chat/completions"
    return "/v1/chat/completions"


def _request_id(rng: random.Random, provider: str) -> str | None:
    bits = rng.getrandbits(128)
    if provider == "openai":
        return f"req_{bits:032x}"
    if provider == "anthropic":
        return f"req_011C{bits % 16**24:024x}"
    if provider == "xai":
        h = f"{bits:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    return None  # Gemini sends no request id header


_Usage = tuple[int, int | None, int | None, int | None, int | None, int | None, int | None, str]


def _usage(rng: random.Random, spec: ModelSpec, input_scale: float, path: str) -> _Usage:
    """Token counts in the table's meaning, and the provider's own usage object they come
    from (what each provider's `normalise_usage` turns into exactly these columns).

    Returns (input, cached, cache_write, cache_write_1h, output, reasoning, total, raw).
    """
    if spec.kind == "embedding":
        n = _count(rng, 250 * input_scale, 1.2, 1, 100_000)
        return n, None, None, None, None, None, n, f'{{"prompt_tokens":{n},"total_tokens":{n}}}'
    prompt = _count(rng, 1200 * input_scale, 1.3, 5, 190_000)
    visible = _count(rng, 180, 1.1, 1, 16_000)
    thinks = spec.kind == "reasoning" and not (spec.provider == "gemini" and rng.random() < 0.3)
    reasoning = _count(rng, 350, 1.1, 0, 24_000) if thinks else 0

    if spec.provider == "anthropic":
        # Anthropic reports no reasoning part: extended thinking is simply more output.
        output = visible + (_count(rng, 300, 1.1, 0, 16_000) if rng.random() < 0.15 else 0)
        read = int(prompt * rng.uniform(0.5, 0.97)) if rng.random() < 0.35 else 0
        write = int((prompt - read) * rng.uniform(0.3, 0.9)) if rng.random() < 0.12 else 0
        write_1h = write if write and rng.random() < 0.2 else 0
        raw = (
            f'{{"input_tokens":{prompt - read - write},"cache_creation_input_tokens":{write},'
            f'"cache_read_input_tokens":{read},"cache_creation":{{"ephemeral_5m_input_tokens":'
            f'{write - write_1h},"ephemeral_1h_input_tokens":{write_1h}}},"output_tokens":'
            f'{output},"service_tier":"standard"}}'
        )
        return prompt, read, write, write_1h, output, None, None, raw

    if spec.provider == "gemini":
        cached = None
        if prompt >= 2048 and rng.random() < 0.2:
            cached = int(prompt * rng.uniform(0.3, 0.9))
        total = prompt + visible + reasoning
        raw = (
            f'{{"promptTokenCount":{prompt},"candidatesTokenCount":{visible},'
            f'"totalTokenCount":{total},'
            + (f'"cachedContentTokenCount":{cached},' if cached is not None else "")
            + f'"promptTokensDetails":[{{"modality":"TEXT","tokenCount":{prompt}}}]'
            + (f',"thoughtsTokenCount":{reasoning}' if thinks else "")
            + "}"
        )
        thoughts = reasoning if thinks else None
        return prompt, cached, None, None, visible + reasoning, thoughts, total, raw

    cached = 0
    if prompt >= 1024 and rng.random() < 0.3:  # OpenAI caches in 128-token steps from 1024
        cached = max(1024, int(prompt * rng.uniform(0.3, 0.95)) // 128 * 128)
    output = visible + reasoning
    if spec.provider == "xai":
        # xAI counts reasoning outside completion_tokens; total_tokens includes it.
        total = prompt + output
        raw = (
            f'{{"prompt_tokens":{prompt},"completion_tokens":{visible},"total_tokens":{total},'
            f'"prompt_tokens_details":{{"text_tokens":{prompt},"audio_tokens":0,'
            f'"image_tokens":0,"cached_tokens":{cached}}},"completion_tokens_details":'
            f'{{"reasoning_tokens":{reasoning},"audio_tokens":0,"accepted_prediction_tokens":0,'
            f'"rejected_prediction_tokens":0}},"num_sources_used":0}}'
        )
        return prompt, cached, None, None, output, reasoning, total, raw
    total = prompt + output
    if path == "/v1/responses":
        raw = (
            f'{{"input_tokens":{prompt},"input_tokens_details":{{"cached_tokens":{cached}}},'
            f'"output_tokens":{output},"output_tokens_details":{{"reasoning_tokens":'
            f'{reasoning}}},"total_tokens":{total}}}'
        )
    else:
        raw = (
            f'{{"prompt_tokens":{prompt},"completion_tokens":{output},"total_tokens":{total},'
            f'"prompt_tokens_details":{{"cached_tokens":{cached},"audio_tokens":0}},'
            f'"completion_tokens_details":{{"reasoning_tokens":{reasoning},"audio_tokens":0,'
            f'"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}}'
        )
    return prompt, cached, None, None, output, reasoning, total, raw
