"""What every importer shares: the rows it writes, the bucket a re-import replaces, the
cursor an interrupted import resumes from, the providers' key lists, and the links that
give imported rows an organisation.

A bucket is one (source, day): all the rows one source reported for one UTC day. Writing a
bucket deletes what the source held for that day first, in the same transaction, so a
bucket is never counted twice, however often it is imported.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlite_utils import Database

from llm_monitor.errors import Invalid, NotFound
from llm_monitor.money.costs import family_of
from llm_monitor.usage import utc_timestamp

TRAILING_DAYS = 7  # re-pulled by every import; provisional until older than this
DEFAULT_DAYS = 30  # what a first import without --since reaches back


@dataclass(slots=True)
class UsageRow:
    """Tokens one source reported for a day, a model and a key or project."""

    provider: str
    model_raw: str | None
    kind: str | None = None  # completions, embeddings, messages, ... (the source's own split)
    api_key_id: str | None = None
    api_key_name: str | None = None
    project_id: str | None = None  # OpenAI project, Anthropic workspace, Google project
    input_tokens: int | None = None  # all prompt tokens, cached and cache writes included
    cached_input_tokens: int | None = None
    cache_write_tokens: int | None = None
    cache_write_1h_tokens: int | None = None
    output_tokens: int | None = None
    requests: int | None = None
    web_search_requests: int | None = None
    raw: Any = None


@dataclass(slots=True)
class CostRow:
    """Money one source reported for a day: exact, in USD."""

    provider: str
    model_raw: str | None
    amount_usd: Decimal
    line_item: str | None = None
    token_type: str | None = None
    api_key_id: str | None = None
    api_key_name: str | None = None
    project_id: str | None = None
    raw: Any = None


@dataclass(slots=True)
class Bucket:
    day: dt.date
    usage: list[UsageRow] = field(default_factory=list)
    costs: list[CostRow] = field(default_factory=list)


def canonical_model(provider: str, name: str | None) -> str | None:
    """The model as reconciliation groups it, on both sides: lower case, without a dated
    snapshot suffix (`gpt-4o-2024-08-06` -> `gpt-4o`), and a console's display name in the
    API's spelling (`Claude Sonnet 4.5` -> `claude-sonnet-4-5`, `Gemini 2.5 Flash` ->
    `gemini-2.5-flash`)."""
    if not name or not name.strip():
        return None
    model = name.strip().lower()
    if " " in model:
        model = re.sub(r"\s+", "-", model)
        if provider == "anthropic":
            model = model.replace(".", "-")
    return family_of(model) or model


def parse_day(value: str, what: str = "date") -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except (TypeError, ValueError):
        raise Invalid(f"{what} must be YYYY-MM-DD, not {value!r}") from None


def utc_today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def now_timestamp() -> str:
    return utc_timestamp(dt.datetime.now(dt.UTC).timestamp())


def _raw(value: Any) -> str | None:
    if value is None:
        return None
    return json.dumps(value, default=str, separators=(",", ":"), ensure_ascii=False)


def write_bucket(
    db: Database,
    source: str,
    bucket: Bucket,
    *,
    provisional: bool,
    imported_at: str,
    keys: KeyBook,
) -> None:
    """Replace what `source` held for `bucket.day` with the bucket's rows (the caller holds
    the transaction)."""
    day = bucket.day.isoformat()
    for table in ("provider_usage", "provider_costs"):
        db.execute(f"delete from {table} where source = ? and day = ?", [source, day])
    common = {"source": source, "day": day, "provisional": int(provisional)}
    common["imported_at"] = imported_at
    usage = []
    for row in bucket.usage:
        key_id, name, hint = keys.resolve(row.provider, row.api_key_id, row.api_key_name)
        usage.append(
            {
                **common,
                "provider": row.provider,
                "model": canonical_model(row.provider, row.model_raw),
                "model_raw": row.model_raw,
                "kind": row.kind,
                "api_key_id": key_id,
                "api_key_name": name,
                "key_hint": hint,
                "project_id": row.project_id,
                "input_tokens": row.input_tokens,
                "cached_input_tokens": row.cached_input_tokens,
                "cache_write_tokens": row.cache_write_tokens,
                "cache_write_1h_tokens": row.cache_write_1h_tokens,
                "output_tokens": row.output_tokens,
                "requests": row.requests,
                "web_search_requests": row.web_search_requests,
                "raw": _raw(row.raw),
            }
        )
    costs = []
    for row in bucket.costs:
        key_id, name, hint = keys.resolve(row.provider, row.api_key_id, row.api_key_name)
        costs.append(
            {
                **common,
                "provider": row.provider,
                "model": canonical_model(row.provider, row.model_raw),
                "model_raw": row.model_raw,
                "line_item": row.line_item,
                "token_type": row.token_type,
                "api_key_id": key_id,
                "api_key_name": name,
                "key_hint": hint,
                "project_id": row.project_id,
                "amount_usd": str(row.amount_usd),
                "raw": _raw(row.raw),
            }
        )
    if usage:
        db["provider_usage"].insert_all(usage)
    if costs:
        db["provider_costs"].insert_all(costs)


# Cursors: where a feed's last run got to.


@dataclass(frozen=True, slots=True)
class Cursor:
    feed: str
    since: str
    until: str
    done_through: str | None
    finished_at: str | None


def load_cursor(db: Database, feed: str) -> Cursor | None:
    row = next(db.query("select * from billing_cursors where feed = ?", [feed]), None)
    if row is None:
        return None
    return Cursor(row["feed"], row["since"], row["until"], row["done_through"], row["finished_at"])


def first_day(
    cursor: Cursor | None,
    since: dt.date | None,
    today: dt.date,
    trailing_days: int = TRAILING_DAYS,
) -> tuple[dt.date, bool]:
    """Where a run starts, and whether it resumes an interrupted one.

    An interrupted run with the same start (or any, when none is asked for) resumes the day
    after the last one it finished. Otherwise a run starts at `since`; without one, at the
    trailing window of provisional days (or after what was imported, if that is earlier),
    or DEFAULT_DAYS back for a first import.
    """
    interrupted = (
        cursor is not None and cursor.finished_at is None and cursor.done_through is not None
    )
    if interrupted and (since is None or since.isoformat() == cursor.since):
        resumed = dt.date.fromisoformat(cursor.done_through) + dt.timedelta(days=1)
        return min(resumed, today), True
    if since is not None:
        return since, False
    window = today - dt.timedelta(days=trailing_days)
    if cursor is None:
        return today - dt.timedelta(days=DEFAULT_DAYS), False
    if cursor.done_through is None:
        return dt.date.fromisoformat(cursor.since), False
    after = dt.date.fromisoformat(cursor.done_through) + dt.timedelta(days=1)
    return min(after, window), False


def begin_run(db: Database, feed: str, since: dt.date, until: dt.date, resumed: bool) -> None:
    now = now_timestamp()
    if resumed:
        db.execute(
            "update billing_cursors set until = ?, updated_at = ? where feed = ?",
            [until.isoformat(), now, feed],
        )
        return
    db["billing_cursors"].upsert(
        {
            "feed": feed,
            "since": since.isoformat(),
            "until": until.isoformat(),
            "done_through": None,
            "finished_at": None,
            "updated_at": now,
        },
        pk="feed",
    )


def advance(db: Database, feed: str, day: dt.date) -> None:
    db.execute(
        "update billing_cursors set done_through = ?, updated_at = ? where feed = ?",
        [day.isoformat(), now_timestamp(), feed],
    )


def finish_run(db: Database, feed: str, last_day: dt.date) -> None:
    now = now_timestamp()
    db.execute(
        "update billing_cursors set done_through = ?, finished_at = ?, updated_at = ? "
        "where feed = ?",
        [last_day.isoformat(), now, now, feed],
    )


def days_between(start: dt.date, end: dt.date) -> Iterator[dt.date]:
    """Each day from `start` to `end`, `end` excluded."""
    day = start
    while day < end:
        yield day
        day += dt.timedelta(days=1)


# Keys: the providers' own lists, mapping a key id to its name and display hint.


def split_hint(hint: str) -> tuple[str, str] | None:
    prefix, sep, suffix = hint.partition("...")
    if not sep:
        prefix, sep, suffix = hint.partition("…")
    return (prefix, suffix) if sep and suffix else None


def hints_match(a: str | None, b: str | None) -> bool:
    """Whether two display hints can be the same key: the shorter prefix begins the longer
    one and the shorter suffix (three characters at least) ends the longer one. The proxy
    keeps `sk-...abcd`; a provider's list may show `sk-proj-...abcd`."""
    if not a or not b:
        return False
    pa, pb = split_hint(a), split_hint(b)
    if pa is None or pb is None:
        return a == b
    (prefix_a, suffix_a), (prefix_b, suffix_b) = pa, pb
    short, long = sorted((suffix_a, suffix_b), key=len)
    if len(short) < 3 or not long.endswith(short):
        return False
    short, long = sorted((prefix_a, prefix_b), key=len)
    return long.startswith(short)


@dataclass(frozen=True, slots=True)
class ProviderKey:
    key_id: str
    name: str | None
    hint: str | None
    project_id: str | None = None


def store_keys(db: Database, provider: str, keys: Iterable[ProviderKey]) -> int:
    now = now_timestamp()
    rows = [
        {
            "provider": provider,
            "key_id": k.key_id,
            "name": k.name,
            "hint": k.hint,
            "project_id": k.project_id,
            "fetched_at": now,
        }
        for k in keys
    ]
    if rows:
        db["billing_keys"].upsert_all(rows, pk=("provider", "key_id"))
    return len(rows)


class KeyBook:
    """The stored key lists, for naming imported rows' keys (by id, or by name where an
    export gives only the name)."""

    def __init__(self, db: Database) -> None:
        self.by_id: dict[tuple[str, str], ProviderKey] = {}
        names: dict[tuple[str, str], list[ProviderKey]] = {}
        for row in db.query("select * from billing_keys"):
            key = ProviderKey(row["key_id"], row["name"], row["hint"], row["project_id"])
            self.by_id[(row["provider"], row["key_id"])] = key
            if row["name"]:
                names.setdefault((row["provider"], row["name"]), []).append(key)
        self.by_name = {k: v[0] for k, v in names.items() if len(v) == 1}

    def resolve(
        self, provider: str, key_id: str | None, name: str | None
    ) -> tuple[str | None, str | None, str | None]:
        """(key id, name, hint), filled in from the key list where it knows the key."""
        known = None
        if key_id:
            known = self.by_id.get((provider, key_id))
        elif name:
            known = self.by_name.get((provider, name))
        if known is None:
            return key_id, name, None
        return known.key_id, known.name or name, known.hint


# Links: which organisation imported rows belong to.


@dataclass(frozen=True, slots=True)
class Link:
    org_id: int
    org: str
    provider: str
    project_id: str | None
    api_key_id: str | None


def link(
    db: Database,
    org_id: int,
    provider: str,
    *,
    project_id: str | None = None,
    api_key_id: str | None = None,
) -> None:
    """Give a provider project (or workspace) or API key to an organisation; a new link for
    the same target replaces the old one."""
    if (project_id is None) == (api_key_id is None):
        raise Invalid("give exactly one of --project and --api-key")
    with db.atomic():
        db.execute(
            "delete from billing_links where provider = ? and project_id is ? and api_key_id is ?",
            [provider, project_id, api_key_id],
        )
        db["billing_links"].insert(
            {
                "org_id": org_id,
                "provider": provider,
                "project_id": project_id,
                "api_key_id": api_key_id,
            }
        )


def unlink(
    db: Database, provider: str, *, project_id: str | None = None, api_key_id: str | None = None
) -> None:
    if (project_id is None) == (api_key_id is None):
        raise Invalid("give exactly one of --project and --api-key")
    with db.atomic():
        cursor = db.execute(
            "delete from billing_links where provider = ? and project_id is ? and api_key_id is ?",
            [provider, project_id, api_key_id],
        )
    if cursor.rowcount == 0:
        raise NotFound(f"no link for {provider} {project_id or api_key_id}")


def links(db: Database) -> list[Link]:
    return [
        Link(r["org_id"], r["name"], r["provider"], r["project_id"], r["api_key_id"])
        for r in db.query(
            "select l.*, o.name from billing_links l join orgs o on o.id = l.org_id "
            "order by o.name, l.provider, l.project_id, l.api_key_id"
        )
    ]
