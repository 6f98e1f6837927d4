"""Opening the usage database and keeping its schema current.

Every part that touches SQLite (the recorder, the token index, the CLI) opens the file
through `open_db`, so all of them agree on WAL, foreign keys and the schema version.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from llm_monitor.store import rollups

migrations = Migrations("llm_monitor")

# The model a view shows and filters by: the one that answered, else the one asked for.
SHOWN_MODEL = "coalesce(response_model, model)"

# What each number of `change_versions` follows (m020): (table, trigger event). The
# tokens' `last_used_at`, which the recorder updates with every batch, is not among them.
# A migration that rebuilds one of these tables must create its triggers again.
CHANGE_VERSION_TABLES = {
    "tokens": (
        ("monitor_tokens", "insert"),
        ("monitor_tokens", "delete"),
        ("monitor_tokens", "update of id, token_hash, org_id, revoked_at"),
        ("orgs", "delete"),
    ),
    "controls": (
        ("budgets", "insert"),
        ("budgets", "update"),
        ("budgets", "delete"),
        ("rate_limits", "insert"),
        ("rate_limits", "update"),
        ("rate_limits", "delete"),
    ),
}


def create_token_table(db: Database, name: str) -> None:
    """Monitor and dashboard tokens alike: a hash to look up, a prefix to show."""
    db[name].create(
        {
            "id": int,
            "org_id": int,
            "token_hash": str,
            "prefix": str,
            "label": str,
            "created_at": str,
            "last_used_at": str,
            "revoked_at": str,
        },
        pk="id",
        not_null={"org_id", "token_hash", "prefix", "created_at"},
        foreign_keys=[("org_id", "orgs", "id")],
    )
    db[name].create_index(["token_hash"], unique=True)


@migrations()
def m001_core_tables(db: Database) -> None:
    db["orgs"].create(
        {"id": int, "name": str, "email": str, "created_at": str},
        pk="id",
        not_null={"name", "created_at"},
    )
    db["orgs"].create_index(["name"], unique=True)
    create_token_table(db, "monitor_tokens")
    db["monitor_tokens"].create_index(["org_id"])
    # Rates are USD per 1M tokens, kept as decimal strings so that no float ever touches money
    # before the final cost.
    db["prices"].create(
        {
            "id": int,
            "provider": str,
            "model": str,
            "effective_from": str,
            "input": str,
            "cached_input": str,
            "cache_write": str,
            "output": str,
            "reasoning": str,
            "above_input_tokens": int,
            "source": str,
            "as_of": str,
        },
        pk="id",
        not_null={"provider", "model", "effective_from", "input", "output", "above_input_tokens"},
        defaults={"above_input_tokens": 0},
    )
    db["prices"].create_index(
        ["provider", "model", "effective_from", "above_input_tokens"], unique=True
    )
    db["usage"].create(
        {
            "id": int,
            "ts": str,
            "org_id": int,
            "token_id": int,
            "provider": str,
            "method": str,
            "path": str,
            "model": str,
            "response_model": str,
            "status": int,
            "outcome": str,
            "streamed": int,
            "usage_injected": int,
            "input_tokens": int,
            "cached_input_tokens": int,
            "cache_write_tokens": int,
            "output_tokens": int,
            "reasoning_tokens": int,
            "total_tokens": int,
            "cost_usd": float,
            "priced": int,
            "latency_ms": float,
            "ttft_ms": float,
            "request_id": str,
            "user": str,
            "tags": str,
            "error": str,
            "raw_usage": str,
        },
        pk="id",
        not_null={"ts", "provider", "method", "path", "outcome", "streamed", "usage_injected"},
        defaults={"streamed": 0, "usage_injected": 0},
        foreign_keys=[("org_id", "orgs", "id"), ("token_id", "monitor_tokens", "id")],
    )
    db["usage"].create_index(["org_id", "ts"])
    db["usage"].create_index(["ts"])
    db["usage"].create_index(["priced"])


@migrations()
def m002_cache_write_1h_and_billable(db: Database) -> None:
    """Anthropic bills one-hour cache writes at their own rate; count_tokens is free."""
    db["usage"].add_column("cache_write_1h_tokens", int)
    db["usage"].add_column("billable", int, not_null_default=1)
    db["prices"].add_column("cache_write_1h", str)


@migrations()
def m003_usage_hourly(db: Database) -> None:
    """The hourly rollup the dashboard reads, backfilled from the rows already there."""
    rollups.create(db, ["usage_hourly"])
    rollups.rebuild(db, names=["usage_hourly"])


@migrations()
def m004_dashboard(db: Database) -> None:
    """Dashboard logins and API tokens, and the rollups and indexes its views read."""
    db["orgs"].add_column("password_hash", str)
    db["orgs"].add_column("is_admin", int, not_null_default=0)
    db["orgs"].create_index(["email"])
    create_token_table(db, "dashboard_tokens")
    # Recent requests walk (org_id, ts) backwards, or these when filtered by model or
    # status; recent errors walk the last one, which holds their filters too, so that a rare
    # model costs index reads only.
    db.execute(f"create index idx_usage_org_model_ts on usage (org_id, {SHOWN_MODEL}, ts)")
    db["usage"].create_index(["org_id", "status", "ts"])
    db.execute(
        "create index idx_usage_errors on usage "
        f"(org_id, ts, status, outcome, {SHOWN_MODEL}) where outcome != 'ok'"
    )
    # p95 latency comes from usage_latency_hourly: sorting a month of a busy organisation's
    # latencies (500,000 rows) took 160 ms alone.
    names = ["usage_daily", "usage_daily_labels", "usage_latency_hourly"]
    rollups.create(db, names)
    rollups.rebuild(db, names=names)


@migrations()
def m005_unread_reason_and_ended_sessions(db: Database) -> None:
    """Why the proxy passed a body on without reading it (a limit), when it did; and the
    dashboard sessions ended by logging out, until they would have expired anyway."""
    db["usage"].add_column("unread_reason", str)
    db["ended_sessions"].create({"session_id": str, "expires_at": int}, pk="session_id")


@migrations()
def m006_billing(db: Database) -> None:
    """The providers' own figures (usage and cost APIs, console exports), what links them to
    organisations, and the proxy's key hint, for reconciliation (llm_monitor.billing).

    Amounts are decimal strings in USD, never floats. A row belongs to one bucket, a
    (source, day): re-importing the bucket replaces its rows.
    """
    # No index of its own: reconciliation reads a date range through the one on `ts`, and
    # each index slows the recorder.
    db["usage"].add_column("key_hint", str)
    common = {
        "id": int,
        "source": str,
        "provider": str,
        "day": str,
        "model": str,
        "model_raw": str,
        "api_key_id": str,
        "api_key_name": str,
        "key_hint": str,
        "project_id": str,
    }
    tail = {"provisional": int, "imported_at": str, "raw": str}
    db["provider_usage"].create(
        {
            **common,
            "kind": str,
            "input_tokens": int,
            "cached_input_tokens": int,
            "cache_write_tokens": int,
            "cache_write_1h_tokens": int,
            "output_tokens": int,
            "requests": int,
            "web_search_requests": int,
            **tail,
        },
        pk="id",
        not_null={"source", "provider", "day", "provisional", "imported_at"},
    )
    db["provider_costs"].create(
        {**common, "line_item": str, "token_type": str, "amount_usd": str, **tail},
        pk="id",
        not_null={"source", "provider", "day", "amount_usd", "provisional", "imported_at"},
    )
    for table in ("provider_usage", "provider_costs"):
        db[table].create_index(["source", "day"])
        db[table].create_index(["day", "provider"])
    db["billing_keys"].create(
        {
            "provider": str,
            "key_id": str,
            "name": str,
            "hint": str,
            "project_id": str,
            "fetched_at": str,
        },
        pk=("provider", "key_id"),
        not_null={"fetched_at"},
    )
    # A (provider, project or workspace) or a (provider, API key) belongs to one organisation.
    db["billing_links"].create(
        {"id": int, "org_id": int, "provider": str, "project_id": str, "api_key_id": str},
        pk="id",
        not_null={"org_id", "provider"},
        foreign_keys=[("org_id", "orgs", "id")],
    )
    db.execute(
        "create unique index idx_billing_links_target on billing_links "
        "(provider, coalesce(project_id, ''), coalesce(api_key_id, ''))"
    )
    # Where an interrupted import resumes: the last day whose buckets were all written.
    db["billing_cursors"].create(
        {
            "feed": str,
            "since": str,
            "until": str,
            "done_through": str,
            "finished_at": str,
            "updated_at": str,
        },
        pk="feed",
    )
    # Sources `billing sync` runs again: never a key, at most the name of a key file.
    db["billing_sources"].create(
        {
            "name": str,
            "provider": str,
            "team_id": str,
            "base_url": str,
            "key_file": str,
            "last_run_at": str,
        },
        pk="name",
    )
    db["billing_reconciliation"].create(
        {
            "id": int,
            "scope_org_id": int,
            "day": str,
            "provider": str,
            "model": str,
            "level": str,
            "key": str,
            "key_name": str,
            "org_id": int,
            "proxy_requests": int,
            "provider_requests": int,
            "proxy_input_tokens": int,
            "provider_input_tokens": int,
            "proxy_output_tokens": int,
            "provider_output_tokens": int,
            "proxy_cost_usd": str,
            "provider_cost_usd": str,
            "difference_usd": str,
            "capture_pct": str,
            "provisional": int,
            "flags": str,
            "computed_at": str,
        },
        pk="id",
        not_null={"day", "provider", "level", "computed_at"},
    )
    db["billing_reconciliation"].create_index(["scope_org_id", "day"])


# Sources of the price files shipped before prices came from genai-prices: their rows are
# copies of published list prices, so they count as the library's, not as local overrides.
_FORMER_SHIPPED_SOURCES = (
    "https://platform.claude.com/docs/en/about-claude/pricing%",
    "https://ai.google.dev/gemini-api/docs/pricing%",
    "Google Developers Blog announcement of gemini-embedding-001%",
    "https://developers.openai.com/api/docs/pricing%",
    "https://openai.com/api/pricing/%",
    "https://docs.x.ai/docs/models%",
)


@migrations()
def m007_price_library_and_cost_basis(db: Database) -> None:
    """Prices from genai-prices next to local overrides; every billable unit counted; each
    row's cost explained (`cost_basis`) or its absence (`unpriced_reason`)."""
    usage = db["usage"]
    for name, type_ in (
        ("input_audio_tokens", int),
        ("output_audio_tokens", int),
        ("input_image_tokens", int),
        ("output_image_tokens", int),
        ("web_search_requests", int),
        ("code_executions", int),
        ("service_tier", str),
        ("reported_cost_usd", float),
        ("cost_basis", str),
        ("unpriced_reason", str),
    ):
        usage.add_column(name, type_)
    # Rows priced before: the reason is known for those whose usage was never seen; the
    # others had no price (or a missing cache rate): `pricing reprice` says which.
    db.execute(
        "update usage set unpriced_reason = case when input_tokens is null and "
        "output_tokens is null then 'usage_unseen' else 'no_price' end where priced = 0"
    )
    # `pricing unpriced` and the admin view read only the rows without any price.
    db.execute(
        f"create index idx_usage_no_price on usage (provider, {SHOWN_MODEL}, ts, org_id, "
        "input_tokens, output_tokens) where unpriced_reason = 'no_price'"
    )

    # Rebuilt rather than altered: input and output rates may now be absent (an embedding
    # model has no output rate), and a price is keyed by its origin, variant and window too.
    old = [
        "id",
        "provider",
        "model",
        "above_input_tokens",
        "effective_from",
        "input",
        "cached_input",
        "cache_write",
        "cache_write_1h",
        "output",
        "reasoning",
        "source",
        "as_of",
    ]
    db.execute("""
        create table prices_new (
          id integer primary key, provider text not null, model text not null,
          origin text not null default 'local', variant text not null default '',
          above_input_tokens integer not null default 0, [window] text not null default '',
          effective_from text not null, effective_until text,
          input text, cached_input text, cache_write text, cache_write_1h text, output text,
          reasoning text, input_audio text, output_audio text, input_image text,
          output_image text, web_search_per_1k text, code_execution_per_1k text,
          source text, as_of text
        )""")
    db.execute(f"insert into prices_new ({', '.join(old)}) select {', '.join(old)} from prices")
    db.execute("drop table prices")
    db.execute("alter table prices_new rename to prices")
    db.execute(
        "update prices set origin = 'library' where "
        + " or ".join("source like ?" for _ in _FORMER_SHIPPED_SOURCES),
        _FORMER_SHIPPED_SOURCES,
    )
    db.execute(
        "create unique index idx_prices_key on prices "
        "(provider, model, origin, variant, above_input_tokens, [window], effective_from)"
    )
    # The recorder rebuilds its price book when this number changes, and only then.
    db.execute("create table prices_version (version integer not null)")
    db.execute("insert into prices_version values (0)")
    for event in ("insert", "update", "delete"):
        db.execute(
            f"create trigger prices_version_{event} after {event} on prices "
            "begin update prices_version set version = version + 1; end"
        )


@migrations()
def m008_members(db: Database) -> None:
    """People log in (email and password) and belong to organisations with a role;
    invitations, an audit log per organisation, and who made each monitor token.

    Each organisation's former login becomes a person, its owner. Two organisations once
    could share a login email: the first one's password logged in, so only organisations
    with that same password hash join that person (the others had no working login).
    """
    db["people"].create(
        {"id": int, "email": str, "password_hash": str, "created_at": str},
        pk="id",
        not_null={"email", "password_hash", "created_at"},
    )
    db.execute("create unique index idx_people_email on people (email collate nocase)")
    db["members"].create(
        {"org_id": int, "person_id": int, "role": str, "created_at": str},
        pk=("org_id", "person_id"),
        not_null={"role", "created_at"},
        foreign_keys=[("org_id", "orgs", "id"), ("person_id", "people", "id")],
    )
    db["members"].create_index(["person_id"])
    db["invitations"].create(
        {
            "id": int,
            "org_id": int,
            "token_hash": str,
            "prefix": str,
            "role": str,
            "created_by": str,
            "created_at": str,
            "expires_at": str,
            "accepted_at": str,
            "accepted_by": int,
            "revoked_at": str,
        },
        pk="id",
        not_null={"org_id", "token_hash", "prefix", "role", "created_at", "expires_at"},
        foreign_keys=[("org_id", "orgs", "id")],
    )
    db["invitations"].create_index(["token_hash"], unique=True)
    db["audit_log"].create(
        {
            "id": int,
            "org_id": int,
            "ts": str,
            "who": str,
            "action": str,
            "detail": str,
            "address": str,
        },
        pk="id",
        not_null={"org_id", "ts", "who", "action"},
    )
    db["audit_log"].create_index(["org_id", "id"])
    db["monitor_tokens"].add_column("created_by", str)
    db["dashboard_tokens"].add_column("role", str, not_null_default="viewer")
    db["orgs"].add_column("deleted_at", str)
    logins = db.query(
        "select id, email, password_hash, created_at from orgs "
        "where password_hash is not null order by id"
    )
    for org in list(logins):
        person = next(
            db.query(
                "select id, password_hash from people where email = ? collate nocase",
                [org["email"]],
            ),
            None,
        )
        if person is None:
            person_id = (
                db["people"]
                .insert(
                    {
                        "email": org["email"],
                        "password_hash": org["password_hash"],
                        "created_at": org["created_at"],
                    }
                )
                .last_pk
            )
        elif person["password_hash"] == org["password_hash"]:
            person_id = person["id"]
        else:
            continue
        db["members"].insert(
            {
                "org_id": org["id"],
                "person_id": person_id,
                "role": "owner",
                "created_at": org["created_at"],
            }
        )
    # The passwords live with the people now; none is left behind in `orgs`.
    db.execute("update orgs set password_hash = null")


class WritingConnection(sqlite3.Connection):
    """A connection whose transactions take the write lock when they begin.

    sqlite-utils' `atomic()` says `BEGIN`, a deferred transaction: one that reads first and
    writes after another process (the dashboard, a proxy) has committed cannot upgrade its
    stale snapshot, and fails at once with "database is locked" (SQLITE_BUSY_SNAPSHOT, which
    the busy timeout does not wait out). `BEGIN IMMEDIATE` waits for the lock instead.
    """

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        return super().execute("BEGIN IMMEDIATE" if sql == "BEGIN" else sql, *args)


def open_db(path: str | Path, *, busy_timeout_ms: int = 250, migrate: bool = True) -> Database:
    """Open (creating if need be) the database with the pragmas every writer relies on.

    A short busy timeout keeps a locked database from blocking callers for long; the
    recorder retries on its own schedule instead.
    """
    conn = sqlite3.connect(
        str(path),
        timeout=busy_timeout_ms / 1000,
        check_same_thread=True,
        factory=WritingConnection,
    )
    db = Database(conn)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    if migrate:
        migrations.apply(db)
    return db


@migrations()
def m009_daily_token_and_no_price_rollups(db: Database) -> None:
    """Per day and monitor token (`usage_daily_labels`, kind 'token'): the token view reads
    a row per token and day instead of one per hour, model and provider; summed from the
    hourly rollup, which has every token already. And `usage_daily_no_price`."""
    columns = ", ".join(rollups.SUMS)
    db.execute("delete from usage_daily_labels where kind = 'token'")  # m004 made them anew
    db.execute(
        f"""insert into usage_daily_labels (day, org_id, kind, label, {columns})
        select substr(hour, 1, 10), org_id, 'token', cast(token_id as text),
          {", ".join(f"sum({s})" for s in rollups.SUMS)}
        from usage_hourly group by 1, 2, 4"""
    )
    # The models no price matched, per day: the admins' list reads this, not `usage`.
    rollups.create(db, ["usage_daily_no_price"])
    rollups.rebuild(db, names=["usage_daily_no_price"])


@migrations()
def m010_spend_controls(db: Database) -> None:
    """Budgets, rate limits, the leases workers spend them from, and alerts with their
    delivery attempts (llm_monitor.controls). Notification URLs hold secrets: they are
    kept in a file of their own (controls.notify), never in the database the dashboard
    serves."""
    db.execute("""
        create table budgets (
          id integer primary key, org_id integer not null references orgs(id),
          scope text not null, scope_value text not null default '',
          period text not null, starts_on text, ends_on text,
          amount_usd text not null, hard integer not null, thresholds text not null,
          on_unpriced text not null default 'refuse', created_at text not null
        )""")
    # One budget of a kind per scope and period: a soft and a hard one may share a scope.
    db.execute(
        "create unique index idx_budgets_scope on budgets "
        "(org_id, scope, scope_value, period, hard)"
    )
    db.execute("""
        create table rate_limits (
          id integer primary key, org_id integer not null references orgs(id),
          scope text not null, scope_value text not null default '',
          rpm integer, tpm integer, created_at text not null
        )""")
    db.execute(
        "create unique index idx_rate_limits_scope on rate_limits (org_id, scope, scope_value)"
    )
    # A meter is `budget:ID`, `rpm:ID` or `tpm:ID`; its window the period it counts in.
    # `granted` is what the holder took (spent, reserved or still free), `used` what it
    # had spent or reserved when it last said so.
    db.execute("""
        create table control_leases (
          meter text not null, window text not null, holder text not null,
          granted integer not null, used integer not null, seen_at real not null,
          primary key (meter, window, holder)
        )""")
    # One row per crossing per window: the unique key keeps workers from raising it twice.
    db.execute("""
        create table alerts (
          id integer primary key, org_id integer references orgs(id),
          kind text not null, scope text not null, window text not null,
          threshold text not null default '', message text not null,
          value real, limit_value real, raised_at text not null,
          delivered_at text, attempts integer not null default 0, next_attempt_at real,
          claimed_until real, last_error text
        )""")
    db.execute("create unique index idx_alerts_key on alerts (kind, scope, window, threshold)")
    db.execute("create index idx_alerts_org on alerts (org_id, raised_at)")
    db.execute("""
        create table alert_deliveries (
          id integer primary key, alert_id integer not null references alerts(id),
          url_id integer not null, attempted_at text not null, ok integer not null, error text
        )""")


@migrations()
def m011_body_digest(db: Database) -> None:
    """A short digest of each request's body (`controls.loops.body_digest`), so that the
    alert evaluator can tell a runaway loop: the same body sent again and again. No index
    of its own: the evaluator reads the last minutes through the one on `ts`."""
    db["usage"].add_column("body_digest", int)


@migrations()
def m012_file_search_and_maps_grounding(db: Database) -> None:
    """Two more units billed per call, beside web searches and code executions: OpenAI's
    file search calls and Gemini's prompts grounded with Google Maps, each counted in
    `usage` and priced by a rate of its own in `prices` (USD per 1,000, as text)."""
    usage = db["usage"]
    usage.add_column("file_searches", int)
    usage.add_column("maps_grounded_prompts", int)
    prices = db["prices"]
    prices.add_column("file_search_per_1k", str)
    prices.add_column("maps_grounding_per_1k", str)
    _fill_library_file_search_rates(db)


def _fill_library_file_search_rates(db: Database) -> None:
    """The library's rows written before the column existed get the file search rate that
    same library version states for them (no new price: a rate it always had). Rows of
    another version are left to `pricing sync`."""
    from llm_monitor.money.library import library_prices, library_source

    source = library_source()
    if not db.execute(
        "select 1 from prices where origin = 'library' and source = ? limit 1", [source]
    ).fetchone():
        return  # a new database: `init` loads the library's prices after the migrations
    db.conn.executemany(
        "update prices set file_search_per_1k = ? where origin = 'library' and source = ? "
        "and provider = ? and model = ? and variant = ? and above_input_tokens = ? "
        "and [window] = ? and effective_from = ?",
        [
            (
                str(e.file_search_per_1k),
                source,
                e.provider,
                e.model,
                e.variant,
                e.above_input_tokens,
                e.window,
                e.effective_from.isoformat(),
            )
            for e in library_prices()
            if e.file_search_per_1k is not None
        ],
    )


@migrations()
def m013_web_search_preview(db: Database) -> None:
    """OpenAI's `web_search_preview` tool calls, counted apart from `web_search`'s (their
    price differs), with a rate of their own in `prices` (USD per 1,000, as text)."""
    db["usage"].add_column("web_search_preview_calls", int)
    db["prices"].add_column("web_search_preview_per_1k", str)


@migrations()
def m014_usage_hourly_users(db: Database) -> None:
    """Spend and requests per hour, organisation and user, backfilled from the rows already
    there: the anomaly check read this hour's rows of `usage` for its users on every
    evaluation, each row about 120 times over its hour."""
    rollups.create(db, ["usage_hourly_users"])
    rollups.rebuild(db, names=["usage_hourly_users"])


@migrations()
def m015_control_baselines(db: Database) -> None:
    """What was recorded against a budget's window before its leases began (`since`),
    read by the lease store when the window's first lease is taken and again when the
    budget's amount changes: a budget set mid-month counts the month's spend.
    `before_bucket` is the part of `spent` before the rollup bucket holding `since`: the
    part read again."""
    db.execute("""
        create table control_baselines (
          meter text not null, window text not null, since real not null,
          limit_value integer not null, spent integer not null, before_bucket integer not null,
          primary key (meter, window)
        )""")


@migrations()
def m016_rollup_cost_nanos(db: Database) -> None:
    """Each spend rollup's cost also in whole nano-dollars (`cost_nanos`, each row rounded
    on its own), so that a budget's spend read from the rollups equals, to the nano, the
    sum of its rows: float sums of the same rows in another order can differ in the last
    digit. Buckets whose rows were pruned get their float sum in nanos; the rest are
    rebuilt from `usage`."""
    for table in rollups.SPEND_ROLLUPS:
        if "cost_nanos" not in db[table].columns_dict:
            db[table].add_column("cost_nanos", int)
        db.execute(f"update {table} set cost_nanos = cast(round(cost_usd * 1e9) as integer)")
    rollups.rebuild(db, names=rollups.SPEND_ROLLUPS)


@migrations()
def m017_uncounted_units(db: Database) -> None:
    """Units a response states that no price of ours counts (Mistral's audio seconds in a
    chat, billed per audio hour), kept with the row so that a reprice leaves it unpriced
    for that reason too."""
    if "uncounted_units" not in db["usage"].columns_dict:  # once named m016 in development
        db["usage"].add_column("uncounted_units", str)


@migrations()
def m018_budget_ranges_in_the_key(db: Database) -> None:
    """One budget of a kind per scope and period, where a date range's dates are part of
    the period: a hard Q2 budget beside a hard Q1 one. NULL dates (calendar periods)
    compare equal through coalesce, which a plain unique index would not do."""
    db.execute("drop index if exists idx_budgets_scope")
    db.execute(
        "create unique index idx_budgets_scope on budgets (org_id, scope, scope_value, period, "
        "coalesce(starts_on, ''), coalesce(ends_on, ''), hard)"
    )


@migrations()
def m019_unpriced_index(db: Database) -> None:
    """Index only the rows whose cost is unknown. Every row paid for an index on `priced`
    (0.3 to 1.3 µs of the recorder's time a row, in two measurements) that no query reads:
    it has three values, and reports count unpriced rows within ranges of the other
    indexes. Unpriced rows, the ones looked for on their own, keep an index, by time."""
    db.execute("drop index if exists idx_usage_priced")
    db.execute("create index idx_usage_unpriced on usage (ts) where priced = 0")


@migrations()
def m020_change_versions(db: Database) -> None:
    """Numbers that move whenever the monitor tokens or the spend controls change (kept by
    triggers, as `prices_version` is): the proxy's token index (every second) and its gate
    (every quarter second) read one of them and read their tables again only when it
    moved. Reading the gate's tables took about 0.4 ms of CPU each time, timed in process
    after a sleep as the thread meets them; the one number, a quarter of that. Each starts at
    a random number, so that a database made anew at the same path shows none a reader has
    seen."""
    db.execute("create table change_versions (name text primary key, version integer not null)")
    for name in CHANGE_VERSION_TABLES:
        db.execute("insert into change_versions values (?, abs(random()) >> 2)", [name])
    for name, events in CHANGE_VERSION_TABLES.items():
        for table, event in events:
            label = event.split()[0]
            db.execute(
                f"create trigger change_versions_{name}_{table}_{label} after {event} on {table} "
                f"begin update change_versions set version = version + 1 where name = '{name}'; end"
            )
