"""Rollup tables: usage summed per time bucket, so the dashboard never rescans `usage`.

- `usage_hourly`: per hour, organisation, monitor token, provider and model.
- `usage_hourly_users`: per hour, organisation and user (`X-Monitor-User`; requests
  without one are not in it): what the spend anomalies of users read, hour by hour.
- `usage_daily`: per day, organisation, provider and model (months across all orgs).
- `usage_daily_labels`: per day, organisation and label, where a label is the request's
  user (`kind` = 'user'), one of its tags as `key=value` (`kind` = 'tag'; '' when the
  request had none, and a request with two tags counts once under each), or its monitor
  token's id (`kind` = 'token', as text; '0' for none).
- `usage_daily_no_price`: per day, organisation, provider and model, the requests that no
  price matched (`unpriced_reason` = 'no_price'): what the admins' list of models without
  a price reads.
- `usage_latency_hourly`: a latency histogram per hour and organisation, for percentiles
  without sorting millions of rows: `requests` whose latency is at most `le_ms`, counted in
  buckets eight to a doubling (each bound 9% above the one before).

The first four also sum cost in whole nano-dollars (`cost_nanos`, each row rounded on its
own): what budgets read, equal to the rows' own sum whatever the order of addition.

The recorder adds each batch to every rollup in the same transaction as the rows (`add`):
the batch's rows are summed once by every key a rollup uses, into a temporary table, and
each rollup adds up those few sums (`Rollup.batch_sql`) rather than every row again. A
repricing or a migration rebuilds the buckets it touches from `usage` (`rebuild`, with
`Rollup.select_sql`). SQLite sums in C what a loop in Python would take the proxy's core
for; `test_rollups.py` checks both ways against sums made in Python.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass

from sqlite_utils import Database

PRUNED_TABLE = "usage_pruned"  # one row: `usage` holds no rows of days before this one

SUMS = (
    "requests",
    "errors",
    "streamed",
    "unpriced",
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_usd",
    "latency_ms_sum",
    "latency_count",
    "ttft_ms_sum",
    "ttft_count",
)
_FLOAT_SUMS = {"cost_usd", "latency_ms_sum", "ttft_ms_sum"}
_KEY_TYPES: dict[str, type] = {"org_id": int, "token_id": int, "le_ms": float}

# What a group of `usage` rows adds to a rollup row; the SQL twin of `contribution`.
_SUMS_SQL = """
    count(*) as requests, sum(outcome != 'ok') as errors, sum(streamed) as streamed,
    count(case when priced = 0 then 1 end) as unpriced,
    sum(coalesce(input_tokens, 0)) as input_tokens,
    sum(coalesce(cached_input_tokens, 0)) as cached_input_tokens,
    sum(coalesce(cache_write_tokens, 0)) as cache_write_tokens,
    sum(coalesce(output_tokens, 0)) as output_tokens,
    sum(coalesce(reasoning_tokens, 0)) as reasoning_tokens,
    sum(coalesce(cost_usd, 0)) as cost_usd,
    sum(coalesce(latency_ms, 0)) as latency_ms_sum, count(latency_ms) as latency_count,
    sum(coalesce(ttft_ms, 0)) as ttft_ms_sum, count(ttft_ms) as ttft_count
"""
_MODEL_SQL = "coalesce(response_model, model, '')"
# Cost in whole nano-dollars, each row rounded on its own: sums of integers are the same in
# any order, so a budget's spend read from the rollups equals its rows' (controls.budgets).
COST_NANOS_SQL = "cast(round(coalesce(cost_usd, 0) * 1e9) as integer)"
SPEND_SUMS = (*SUMS, "cost_nanos")
_SPEND_SQL = f"{_SUMS_SQL}, sum({COST_NANOS_SQL}) as cost_nanos"
SPEND_ROLLUPS = ("usage_hourly", "usage_hourly_users", "usage_daily", "usage_daily_labels")


BUCKETS_PER_DOUBLING = 8
# Latencies are counted from 1 µs to 1e9 ms (11.6 days): past that, SQLite's `round` and
# Python's part ways in the last digit.
LATENCY_FLOOR_MS, LATENCY_CAP_MS = 0.001, 1e9

# The bucket bound of `latency_ms`, made by SQLite (its math functions): a Python function
# called from SQL ran once per row, taking the interpreter lock each time (1.7 against
# about 0.5 µs a row).
_LATENCY_LE_SQL = (
    f"round(pow(2, (floor({BUCKETS_PER_DOUBLING} * log2(min(max(latency_ms, "
    f"{LATENCY_FLOOR_MS}), {LATENCY_CAP_MS:.0f}))) + 1) / {BUCKETS_PER_DOUBLING}.0), 3)"
)


def latency_le(latency_ms: float) -> float:
    """The upper bound of the histogram bucket a latency falls in (ms, rounded to 1 µs);
    the Python twin of `_LATENCY_LE_SQL` (SQLite rounds an exact half up: 0.0625 -> 0.063)."""
    clamped = min(max(latency_ms, LATENCY_FLOOR_MS), LATENCY_CAP_MS)
    bucket = math.floor(BUCKETS_PER_DOUBLING * math.log2(clamped))
    return round(2 ** ((bucket + 1) / BUCKETS_PER_DOUBLING) + 1e-12, 3)


def use_math_functions(db: Database) -> None:
    """SQLite's math functions (log2, floor, pow), from Python where this SQLite was built
    without them (they are optional before 3.35 and in some builds)."""
    try:
        db.conn.execute("select log2(2), floor(1.5), pow(2, 3)")
    except sqlite3.OperationalError:
        db.conn.create_function("log2", 1, math.log2, deterministic=True)
        db.conn.create_function("floor", 1, math.floor, deterministic=True)
        db.conn.create_function("pow", 2, math.pow, deterministic=True)


@dataclass(frozen=True)
class Rollup:
    table: str
    key: tuple[str, ...]
    bucket_length: int  # characters of `ts` that name the bucket: 13 for hours, 10 for days
    # `select <key columns>, <sums>` over the `usage` rows that `{rows}` (a condition with
    # one parameter) picks, grouped by the key.
    select_sql: str
    indexes: tuple[tuple[str, ...], ...]
    sums: tuple[str, ...] = SUMS  # always the first ones of SUMS, or SPEND_SUMS
    # The same sums from `rollup_batch` (a batch summed by every key), where its keys are
    # there; None: `add` reads the batch's rows in `usage` (latency buckets are per row).
    batch_sql: str | None = None

    def insert_sql(self, rows: str) -> str:
        """Insert the sums of the `usage` rows that the condition `rows` picks."""
        return self._insert(self.select_sql.format(rows=rows))

    def add_sql(self) -> str:
        """Add a batch's sums to the buckets they fall in: from `rollup_batch`, or from
        the batch's rows (each `?` is the last rowid before the batch)."""
        select = self.batch_sql or self.select_sql.format(rows="usage.rowid > ?")
        return (
            self._insert(select)
            + f" on conflict ({', '.join(self.key)}) do update set "
            + ", ".join(f"{s} = {s} + excluded.{s}" for s in self.sums)
        )

    def _insert(self, select: str) -> str:
        return f"insert into {self.table} ({', '.join(self.key + self.sums)}) {select}"


# A batch summed by every key a rollup uses: a batch of rows holds a few such groups.
_BATCH_KEY = ("hour", "org_id", "token_id", "provider", "model", "user", "tags", "no_price")
_BATCH_TABLE = (
    f"create temp table if not exists rollup_batch ({', '.join(_BATCH_KEY + SPEND_SUMS)})"
)
_BATCH_FILL = f"""insert into temp.rollup_batch ({", ".join(_BATCH_KEY + SPEND_SUMS)})
    select substr(ts, 1, 13), coalesce(org_id, 0), coalesce(token_id, 0), provider,
    {_MODEL_SQL}, user, tags, unpriced_reason = 'no_price', {_SPEND_SQL}
    from usage where usage.rowid > ? group by 1, 2, 3, 4, 5, 6, 7, 8"""


def _from_batch(
    key: tuple[str, ...],
    where: str = "true",
    sums: tuple[str, ...] = SPEND_SUMS,
    source: str = "rollup_batch",
) -> str:
    """`select <key>, <sums>` from `source` (`rollup_batch`, or it joined to what a key
    needs) where `where`, grouped by the key."""
    summed = ", ".join(f"sum({s})" for s in sums)
    groups = ", ".join(str(i) for i in range(1, len(key) + 1))
    return f"select {', '.join(key)}, {summed} from {source} where {where} group by {groups}"


_DAY = "substr(hour, 1, 10)"


ROLLUPS = (
    Rollup(
        "usage_hourly",
        ("hour", "org_id", "token_id", "provider", "model"),
        13,
        f"""select substr(ts, 1, 13), coalesce(org_id, 0), coalesce(token_id, 0), provider,
        {_MODEL_SQL}, {_SPEND_SQL} from usage where {{rows}} group by 1, 2, 3, 4, 5""",
        (("org_id", "hour"),),
        SPEND_SUMS,
        _from_batch(("hour", "org_id", "token_id", "provider", "model")),
    ),
    Rollup(
        "usage_hourly_users",
        ("hour", "org_id", "user"),
        13,
        f"""select substr(ts, 1, 13), coalesce(org_id, 0), user, {_SPEND_SQL}
        from usage where {{rows}} and user is not null group by 1, 2, 3""",
        (),
        SPEND_SUMS,
        _from_batch(("hour", "org_id", "user"), "user is not null"),
    ),
    Rollup(
        "usage_daily",
        ("day", "org_id", "provider", "model"),
        10,
        f"""select substr(ts, 1, 10), coalesce(org_id, 0), provider, {_MODEL_SQL}, {_SPEND_SQL}
        from usage where {{rows}} group by 1, 2, 3, 4""",
        (("org_id", "day"),),
        SPEND_SUMS,
        _from_batch((_DAY, "org_id", "provider", "model")),
    ),
    Rollup(
        "usage_daily_labels",
        ("day", "org_id", "kind", "label"),
        10,
        f"""select substr(ts, 1, 10), coalesce(org_id, 0), 'user', coalesce(user, ''),
        {_SPEND_SQL} from usage where {{rows}} group by 1, 2, 3, 4
        union all
        select substr(ts, 1, 10), coalesce(org_id, 0), 'token', cast(coalesce(token_id, 0) as text),
        {_SPEND_SQL} from usage where {{rows}} group by 1, 2, 3, 4
        union all
        select substr(ts, 1, 10), coalesce(org_id, 0), 'tag',
        coalesce(tag.key || '=' || tag.value, ''), {_SPEND_SQL}
        from usage left join json_each(usage.tags) as tag where {{rows}} group by 1, 2, 3, 4""",
        (("org_id", "kind", "day"),),
        SPEND_SUMS,
        " union all ".join(
            (
                _from_batch((_DAY, "org_id", "'user'", "coalesce(user, '')")),
                _from_batch((_DAY, "org_id", "'token'", "cast(token_id as text)")),
                _from_batch(
                    (_DAY, "org_id", "'tag'", "coalesce(tag.key || '=' || tag.value, '')"),
                    source="rollup_batch left join json_each(rollup_batch.tags) as tag",
                ),
            )
        ),
    ),
    Rollup(
        "usage_daily_no_price",
        ("day", "org_id", "provider", "model"),
        10,
        f"""select substr(ts, 1, 10), coalesce(org_id, 0), provider, {_MODEL_SQL}, {_SUMS_SQL}
        from usage where {{rows}} and unpriced_reason = 'no_price' group by 1, 2, 3, 4""",
        (("provider", "model"),),
        batch_sql=_from_batch((_DAY, "org_id", "provider", "model"), "no_price", SUMS),
    ),
    Rollup(
        "usage_latency_hourly",
        ("hour", "org_id", "le_ms"),
        13,
        f"""select substr(ts, 1, 13), coalesce(org_id, 0), {_LATENCY_LE_SQL}, count(*)
        from usage where {{rows}} and latency_ms is not null group by 1, 2, 3""",
        (("org_id", "hour", "le_ms", "requests"),),
        sums=("requests",),
    ),
)


def create(db: Database, names: Iterable[str] | None = None) -> None:
    """Create the rollup tables (all, or those named) with their indexes."""
    for rollup in ROLLUPS:
        if names is not None and rollup.table not in names:
            continue
        table = db[rollup.table]
        table.create(
            {
                **{k: _KEY_TYPES.get(k, str) for k in rollup.key},
                **{s: (float if s in _FLOAT_SUMS else int) for s in rollup.sums},
            },
            pk=rollup.key,
            not_null=set(rollup.key),
        )
        for columns in rollup.indexes:
            table.create_index(list(columns))


def add(db: Database, after_rowid: int) -> None:
    """Add the `usage` rows after `after_rowid` (the batch just inserted, inside the
    caller's transaction) to every rollup: the same sums as `rebuild`, made by SQLite. The
    rows are summed once into `rollup_batch` (kept, emptied, per connection), each rollup
    adds up those sums; the latency histogram reads the rows."""
    use_math_functions(db)
    conn = db.conn
    conn.execute(_BATCH_TABLE)
    conn.execute("delete from temp.rollup_batch")
    conn.execute(_BATCH_FILL, [after_rowid])
    for rollup in ROLLUPS:
        sql = rollup.add_sql()
        conn.execute(sql, [after_rowid] * sql.count("?"))


def rebuild(db: Database, since: str = "", names: Iterable[str] | None = None) -> None:
    """Recompute rollups from `usage` for every bucket from `since` (a date or an hour
    such as `2026-06-01T13`; everything if empty). All rollups, or those named.

    Never before the day `llm-monitor prune` removed rows up to: those buckets keep the
    sums of rows that are gone."""
    if PRUNED_TABLE in db.table_names():
        pruned = db.execute(f"select max(before) from {PRUNED_TABLE}").fetchone()[0] or ""
        since = max(since, pruned)
    use_math_functions(db)
    for rollup in ROLLUPS:
        if names is not None and rollup.table not in names:
            continue
        start = since[: rollup.bucket_length]
        first = rollup.key[0]
        db.execute(f"delete from {rollup.table} where {first} >= ?", [start])
        sql = rollup.insert_sql("usage.ts >= ?")
        db.execute(sql, [start] * sql.count("?"))
