"""Alerts: budget thresholds, spend anomalies, error spikes and unpriced models, each
raised once per crossing per window, and delivered to the organisation's notification
URLs with retries.

`evaluate` reads budgets and the hourly rollup and inserts what crossed; the `alerts`
table's unique key (kind, scope, window, threshold) makes a second insert a no-op, so any
number of workers can evaluate. `deliver_due` claims each undelivered alert for a minute
before sending, so that two workers do not send it twice; every attempt is recorded, and
a failed one is retried with backoff until it succeeds or a day has passed.
`Watcher` runs both on a thread of its own, never on the proxy's event loop.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import sqlite3
import statistics
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from llm_monitor.controls import periods
from llm_monitor.controls.budgets import Budget, load_budgets, nanos_usd, spent_nanos
from llm_monitor.controls.loops import LoopRule, digest_hex
from llm_monitor.controls.notify import NotifyFile, Target, notify_path, send
from llm_monitor.controls.periods import Window
from llm_monitor.inert import printable
from llm_monitor.store.database import open_db
from llm_monitor.usage import utc_timestamp

logger = logging.getLogger(__name__)

DEFAULT_K = 5.0
WEEKS = 4  # the trailing weeks whose same hour makes the median
MIN_ANOMALY_USD = 0.05  # below this an hour's spend is noise, whatever its median
MIN_ERROR_REQUESTS = 20
# An hour's spend over few requests is one request's size: heavy-tailed (one long prompt
# costs 20 typical ones), so a key is judged only once its usual hour has this many.
MIN_BASELINE_REQUESTS = 20
MIN_MINUTE_REQUESTS = 20  # fewer in a minute is no spike, whatever the usual
RETRY_FOR = dt.timedelta(days=1)
MAX_BACKOFF = 900.0
CLAIM_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class Draft:
    org_id: int | None
    kind: str
    scope: str
    window: str
    threshold: str
    message: str
    value: float | None = None
    limit_value: float | None = None


def _hour(at: dt.datetime) -> str:
    return at.strftime("%Y-%m-%dT%H")  # as usage_hourly.hour


def _same_hours(at: dt.datetime) -> list[str]:
    """The same hour of the week, and the hours either side of it, in each of the last
    four weeks: twelve samples, so that one odd hour does not make the median."""
    return [
        _hour(at - dt.timedelta(weeks=week) + dt.timedelta(hours=shift))
        for week in range(1, WEEKS + 1)
        for shift in (-1, 0, 1)
    ]


def budget_drafts(db: Database, at: dt.datetime) -> list[Draft]:
    """Every threshold of every budget that its window's spend has reached."""
    names = {row["id"]: row["name"] for row in db.query("select id, name from orgs")}
    drafts = []
    for budget in load_budgets(db):
        window = budget.window(at)
        if window is None:
            continue
        spent = spent_nanos(db, budget, window)
        limit = budget.limit
        for pct in budget.thresholds:
            if spent * 100 >= limit * pct:
                kind = "hard" if budget.hard else "soft"
                drafts.append(
                    Draft(
                        budget.org_id,
                        "budget",
                        budget.meter,
                        window.key,
                        f"{pct}%",
                        f"{names.get(budget.org_id, '?')}: {kind} {budget.describe()} reached "
                        f"{pct}%: ${nanos_usd(spent):.2f} of ${nanos_usd(limit):.2f} "
                        f"(resets {window.end_ts})",
                        nanos_usd(spent),
                        nanos_usd(limit),
                    )
                )
    return drafts


def refusing_draft(db: Database, budget: Budget, window: Window, taken: int) -> Draft:
    """A hard budget's 100% alert, raised when it first refuses a request in its window:
    its recorded spend never reaches 100% (that is what it holds), so the evaluator's
    threshold alone would never fire. The same key as the evaluator's 100%: one alert."""
    row = db.execute("select name from orgs where id = ?", [budget.org_id]).fetchone()
    return Draft(
        budget.org_id,
        "budget",
        budget.meter,
        window.key,
        "100%",
        f"{row[0] if row else '?'}: hard {budget.describe()} reached 100% and is refusing "
        f"requests: ${nanos_usd(taken):.2f} of ${nanos_usd(budget.limit):.2f} spent or "
        f"reserved (resets {window.end_ts})",
        nanos_usd(taken),
        nanos_usd(budget.limit),
    )


# Per dimension: what the alert calls it, and the hourly rollup that has it and its key
# there. Its key in `usage`, for the minutes of this hour, is read by `_RECENT_SQL`.
_DIMENSIONS = (
    ("token", "usage_hourly", "token_id"),
    ("user", "usage_hourly_users", "user"),
    ("model", "usage_hourly", "model"),
)
History = dict[tuple[Any, Any, str], tuple[float, int]]
# Per dimension, (organisation, key, minute) -> [spend, requests].
MinuteCounts = dict[str, dict[tuple[Any, Any, str], list[float]]]

# `usage` rows summed per organisation, token, user, model and minute: every dimension's
# minutes in one read of the rows (followed by the WHERE and GROUP BY of its caller).
_RECENT_SQL = """select coalesce(org_id, 0), coalesce(token_id, 0), user,
    coalesce(response_model, model, ''), substr(ts, 1, 16), sum(coalesce(cost_usd, 0)),
    count(*) from usage """
_RECENT_GROUPS = " group by 1, 2, 3, 4, 5"


def _hour_start(hour: str) -> dt.datetime:
    return dt.datetime.strptime(hour, "%Y-%m-%dT%H").replace(tzinfo=dt.UTC)


def _no_minutes() -> MinuteCounts:
    return {what: {} for what, *_ in _DIMENSIONS}


def _add_minutes(counts: MinuteCounts, rows: Iterable[tuple[Any, ...]]) -> None:
    """Add `_RECENT_SQL`'s sums to each dimension's minutes (requests without a user are
    in no user's)."""
    for org, token, user, model, minute, cost, requests in rows:
        for what, key in (("token", token), ("user", user), ("model", model)):
            if key is not None:
                found = counts[what].setdefault((org, key, minute), [0.0, 0])
                found[0] += cost
                found[1] += requests


def _minute_counts(db: Database, start: str, end: str) -> MinuteCounts:
    """Per dimension, organisation, key and minute, spend and requests of the `usage` rows
    with `start` <= ts < `end`: a range of the index on `ts`, never the whole table."""
    counts = _no_minutes()
    where = "where ts >= ? and ts < ?"
    _add_minutes(counts, db.execute(_RECENT_SQL + where + _RECENT_GROUPS, [start, end]))
    return counts


class RecentMinutes:
    """The minutes `anomaly_drafts` judges, kept by the watcher between evaluations: each
    time it reads only the rows added since (by rowid), where reading the last minute or
    two of `usage` again every time, once per dimension, read each row two dozen times
    (85 ms of the proxy's core every 15 s at 600 requests a second). A row recorded late
    counts in its own minute, as it would when read by time."""

    def __init__(self) -> None:
        self._counts = _no_minutes()
        self._last_rowid: int | None = None  # the last row added to the counts
        self._since = ""  # the `ts` from which the counts hold every row

    def read(self, db: Database, start: str, end: str) -> MinuteCounts:
        """`_minute_counts(db, start, end)`, from what was read before and the new rows;
        a row stamped after `end` waits in its minute until that minute is judged."""
        (top,) = db.execute("select coalesce(max(rowid), 0) from usage").fetchone()
        if self._last_rowid is None or start < self._since or top < self._last_rowid:
            # First, back in time, or rows removed: from the index on `ts`, as a new one
            # (`+rowid`: a bound on the rowid must not make the whole table the range).
            self._counts = _no_minutes()
            where = "where ts >= ? and +rowid <= ?"
            _add_minutes(
                self._counts, db.execute(_RECENT_SQL + where + _RECENT_GROUPS, [start, top])
            )
        elif top > self._last_rowid:
            where = "where rowid > ? and rowid <= ? and ts >= ?"
            args = [self._last_rowid, top, start]
            _add_minutes(self._counts, db.execute(_RECENT_SQL + where + _RECENT_GROUPS, args))
        self._last_rowid, self._since = top, start
        first, last = start[:16], end[:16]
        for minutes in self._counts.values():
            for key in [k for k in minutes if k[2] < first]:
                del minutes[key]
        return {
            what: {k: v for k, v in minutes.items() if k[2] <= last}
            for what, minutes in self._counts.items()
        }


def _history(db: Database, table: str, key: str, at: dt.datetime) -> History:
    """Spend and requests per (organisation, key, hour) in the same hours of the last
    weeks (`_same_hours`), from the hourly rollup `table`."""
    past = _same_hours(at)
    return {
        (org, value, h): (cost, requests)
        for org, value, h, cost, requests in db.execute(
            f"select org_id, {key}, hour, sum(cost_usd), sum(requests) "
            f"from {table} where hour in ({','.join('?' * len(past))}) "
            f"group by org_id, {key}, hour",
            past,
        )
    }


def _usual(history: History, org: Any, key: Any, at: dt.datetime) -> tuple[float, float]:
    """The median spend and the median requests of a key's same hours (0 where none)."""
    samples = [history.get((org, key, h), (0.0, 0)) for h in _same_hours(at)]
    return (
        statistics.median(cost for cost, _ in samples),
        statistics.median(requests for _, requests in samples),
    )


def anomaly_drafts(
    db: Database,
    at: dt.datetime,
    k: float = DEFAULT_K,
    min_usd: float = MIN_ANOMALY_USD,
    recent: RecentMinutes | None = None,
) -> list[Draft]:
    """This hour's spend so far, per token, user and model, above k times the median of
    the same hours of the week over the last four weeks (see `_same_hours`; a missing hour
    counts as 0), and at least `min_usd`; and a minute's requests (this minute's and the
    last one's) above k times the median requests per minute of those hours, and at least
    `MIN_MINUTE_REQUESTS`. Only keys whose usual hour has at least
    `MIN_BASELINE_REQUESTS` requests are judged. The minutes come from `recent` where the
    caller keeps one (the watcher), else from the rows of those minutes."""
    hour = _hour(at)
    minute = at.replace(second=0, microsecond=0)
    start = periods.usage_ts(max(minute - dt.timedelta(minutes=1), _hour_start(hour)))
    end = periods.usage_ts(at + dt.timedelta(seconds=1))
    by_minute = (recent.read if recent is not None else _minute_counts)(db, start, end)
    drafts = []
    for what, table, rollup_key in _DIMENSIONS:
        current = db.execute(
            f"select org_id, {rollup_key}, sum(cost_usd) from {table} where hour = ? "
            f"group by org_id, {rollup_key}",
            [hour],
        ).fetchall()
        minutes = [(*key, *sums) for key, sums in sorted(by_minute[what].items())]
        if not current and not minutes:
            continue
        history = _history(db, table, rollup_key, at)
        for org, key, spend in current:
            median, usual_requests = _usual(history, org, key, at)
            if usual_requests >= MIN_BASELINE_REQUESTS and spend >= min_usd and spend > k * median:
                drafts.append(
                    Draft(
                        org or None,
                        "anomaly_spend",
                        f"org:{org}:{what}:{key}",
                        hour,
                        f"{k:g}x",
                        f"spend of {what} {printable(key)} this hour (${spend:.2f} so far, "
                        f"{hour}Z) is over {k:g} times its median for this hour of the week "
                        f"(${median:.2f})",
                        spend,
                        median,
                    )
                )
        for org, key, when, _, requests in minutes:
            usual = _usual(history, org, key, at)[1]
            per_minute = usual / 60
            if (
                usual >= MIN_BASELINE_REQUESTS
                and requests >= MIN_MINUTE_REQUESTS
                and requests > k * per_minute
            ):
                drafts.append(
                    Draft(
                        org or None,
                        "anomaly_requests",
                        f"org:{org}:{what}:{key}",
                        hour,  # once an hour, not once a minute while it lasts
                        f"{k:g}x",
                        f"{what} {printable(key)} sent {requests} requests in the minute "
                        f"{when}Z, over {k:g} times its median for this hour of the week "
                        f"({per_minute:.1f} a minute)",
                        requests,
                        per_minute,
                    )
                )
    return drafts


def error_drafts(db: Database, at: dt.datetime, k: float = DEFAULT_K) -> list[Draft]:
    """An organisation's error rate this hour above k times its usual for this hour of
    the week, and above 20%, with at least 20 requests."""
    hour = _hour(at)
    past = _same_hours(at)
    rates: dict[tuple[int, str], float] = {
        (org, h): errors / requests
        for org, h, requests, errors in db.execute(
            f"select org_id, hour, sum(requests), sum(errors) from usage_hourly "
            f"where hour in ({','.join('?' * len(past))}) group by org_id, hour",
            past,
        )
        if requests
    }
    drafts = []
    for org, requests, errors in db.execute(
        "select org_id, sum(requests), sum(errors) from usage_hourly where hour = ? "
        "group by org_id",
        [hour],
    ):
        if requests < MIN_ERROR_REQUESTS:
            continue
        rate = errors / requests
        usual = statistics.median(rates.get((org, h), 0.0) for h in past)
        if rate > 0.2 and rate > k * usual:
            drafts.append(
                Draft(
                    org or None,
                    "error_spike",
                    f"org:{org}",
                    hour,
                    f"{k:g}x",
                    f"{errors} of {requests} requests failed this hour ({hour}Z); usually "
                    f"{usual:.0%}",
                    rate,
                    usual,
                )
            )
    return drafts


def unpriced_drafts(db: Database, at: dt.datetime) -> list[Draft]:
    """Models seen today without a price: their cost is unknown (NULL), never $0.

    Read from the day's rollup (`usage_daily_no_price`): scanning the day's rows instead
    took 0.26 s at a million rows, and grew all day, every evaluation."""
    day = periods.window_of("day", at)
    assert day is not None
    return [
        Draft(
            org,
            "unpriced_model",
            f"org:{org}:{provider}/{model}",
            day.key,
            "",
            f"{provider} model {printable(model)} has no price: its requests are recorded "
            "without a cost (see `llm-monitor pricing check`)",
        )
        for org, provider, model in db.execute(
            "select nullif(org_id, 0), provider, nullif(model, '') from usage_daily_no_price "
            "where day = ? order by 1, 2, 3",
            [day.key],
        )
    ]


def loop_window(at: dt.datetime, minutes: int) -> dt.datetime:
    """The start of the fixed `minutes`-long window (counted from the epoch) holding `at`:
    a loop is alerted at most once in each."""
    step = minutes * 60
    return dt.datetime.fromtimestamp(int(at.timestamp()) // step * step, dt.UTC)


LoopKey = tuple[Any, Any, int]  # organisation, monitor token, body digest
# A loop found: its key, its requests in the window, and the rowid of its latest one.
FoundLoop = tuple[Any, Any, int, int, int]


def _in_window(at: dt.datetime, rule: LoopRule) -> list[str]:
    """The bounds of a loop's window as `usage.ts` compares: after the first, up to the
    second."""
    return [periods.usage_ts(at - dt.timedelta(minutes=rule.minutes)), periods.usage_ts(at)]


def loop_drafts(db: Database, at: dt.datetime, rule: LoopRule | None = None) -> list[Draft]:
    """The same request body sent `rule.requests` times or more within the last
    `rule.minutes` minutes from one monitor token (or from no token): a runaway loop.

    Raised once per loop per fixed window of `rule.minutes` minutes (see `loop_window`),
    and only when the loop sent something in that window: one that keeps going is raised
    again in the next window, one that stopped is not. Reads the last minutes of `usage`
    through its index on `ts` (the watcher reads less: `RecentLoops`).
    """
    rule = rule or LoopRule.from_env()
    found = db.execute(
        "select org_id, token_id, body_digest, count(*), max(rowid) from usage "
        "where ts > ? and ts <= ? and body_digest is not null "
        "group by org_id, token_id, body_digest having count(*) >= ? and max(ts) >= ?",
        [*_in_window(at, rule), rule.requests, periods.usage_ts(loop_window(at, rule.minutes))],
    ).fetchall()
    return _loop_drafts_of(db, found, at, rule)


def _loop_drafts_of(
    db: Database, found: Iterable[FoundLoop], at: dt.datetime, rule: LoopRule
) -> list[Draft]:
    """The alerts of the loops found. The model and path a message names are those of the
    loop's latest row, read for the loops alone (taking them for every body in the grouping
    read cost half as much again: 260 against 180 ms of CPU over 200,000 rows)."""
    window = loop_window(at, rule.minutes)
    drafts = []
    for org, token, digest, count, latest in found:
        latest_row = db.execute(
            "select coalesce(response_model, model), path from usage where rowid = ?", [latest]
        ).fetchone()
        model, path = latest_row or (None, "")  # pruned meanwhile: named without it
        who = f"monitor token {token}" if token is not None else "requests without a token"
        drafts.append(
            Draft(
                org,
                "runaway_loop",
                f"org:{org}:token:{token or 0}:body:{digest_hex(digest)}",
                f"{window:%Y-%m-%dT%H:%M}/{rule.minutes}m",
                f"{rule.requests}/{rule.minutes}m",
                f"{who} sent the same request body {count} times in the last "
                f"{rule.minutes} minutes ({printable(model or '-')} {printable(path)}, "
                f"body {digest_hex(digest)}): a runaway loop?",
                count,
                rule.requests,
            )
        )
    return drafts


class RecentLoops:
    """The watcher's loop search, reading each row once rather than once a minute for as
    long as it is in the window (over 200,000 rows of distinct bodies, grouping the window
    by body took 164 ms of CPU; reading a minute's rows since the last search, 9 ms).

    Each search reads the rows recorded since the last one (a part, by rowid). A loop sends
    its body `requests` times within the window, whose rows were read in fewer parts than
    that (one a minute: 11 for 10 minutes, against 20 requests), so two of its requests
    came in one part: a body seen twice in a part is remembered for the window's length,
    and only such a body, once it comes again, is counted over the whole window (through
    the index on `ts`). A loop not raised yet has come again since: one that had not, and
    was one already, was raised by the search before, or is out of its window. Otherwise
    (the first search, another rule, as many parts as requests, time going back, rows
    removed, a search that failed) the window is read whole, as `loop_drafts` reads it.

    A body is counted in every row read so far that is stamped after the window's start:
    `loop_drafts` stops at `at`, to the second, and finds a row of that very second at its
    next search; here that row is read now or never again."""

    def __init__(self) -> None:
        self._rule: LoopRule | None = None
        self._at: dt.datetime | None = None  # the last search's time
        self._last_rowid = 0  # the last row read
        self._parts: list[dt.datetime] = []  # when each part was read
        self._twice: dict[LoopKey, dt.datetime] = {}  # seen twice in the part read then

    def drafts(self, db: Database, at: dt.datetime, rule: LoopRule | None = None) -> list[Draft]:
        rule = rule or LoopRule.from_env()
        since = at - dt.timedelta(minutes=rule.minutes)
        (top,) = db.execute("select coalesce(max(rowid), 0) from usage").fetchone()
        parts = [t for t in self._parts if t > since]
        if (
            rule != self._rule
            or self._at is None
            or at < self._at
            or top < self._last_rowid
            or len(parts) + 1 >= rule.requests
        ):
            self._twice, parts = {}, []
            found = self._read_whole(db, at, rule, top)
        else:
            found = self._read_part(db, at, rule, top)
        self._rule, self._at, self._last_rowid = rule, at, top
        self._parts = [*parts, at]
        self._twice = {key: seen for key, seen in self._twice.items() if seen > since}
        return _loop_drafts_of(db, found, at, rule)

    def forget(self) -> None:
        """Read the window whole next time (a search whose alerts were not recorded)."""
        self._at = None

    def _read_whole(
        self, db: Database, at: dt.datetime, rule: LoopRule, top: int
    ) -> list[FoundLoop]:
        """Every body seen twice among the rows up to `top` stamped in the window (or
        after: `at` is read before `top`); the loops among them."""
        rows = db.execute(
            "select org_id, token_id, body_digest, count(*), max(rowid), max(ts) from usage "
            "where ts > ? and +rowid <= ? and body_digest is not null "
            "group by org_id, token_id, body_digest having count(*) >= 2",
            [_in_window(at, rule)[0], top],
        ).fetchall()
        self._twice = {(org, token, digest): at for org, token, digest, *_ in rows}
        return self._loops(rows, at, rule)

    def _read_part(
        self, db: Database, at: dt.datetime, rule: LoopRule, top: int
    ) -> list[FoundLoop]:
        """The bodies of the new part seen twice in it, or remembered and seen again: those
        counted over the window."""
        twice = json.dumps(sorted({digest for _, _, digest in self._twice}))
        again = []
        for org, token, digest, count in db.execute(
            "select org_id, token_id, body_digest, count(*) from usage "
            "where rowid > ? and rowid <= ? and body_digest is not null "
            "group by org_id, token_id, body_digest "
            "having count(*) >= 2 or body_digest in (select value from json_each(?))",
            [self._last_rowid, top, twice],
        ):
            key = (org, token, digest)
            if count >= 2:
                self._twice[key] = at
                again.append(key)
            elif key in self._twice:
                again.append(key)
        if not again:
            return []
        rows = db.execute(
            "select org_id, token_id, body_digest, count(*), max(rowid), max(ts) from usage "
            "where ts > ? and +rowid <= ? and body_digest in (select value from json_each(?)) "
            "group by org_id, token_id, body_digest",
            [
                _in_window(at, rule)[0],
                top,
                json.dumps(sorted({digest for _, _, digest in again})),
            ],
        ).fetchall()
        wanted = set(again)
        return self._loops([r for r in rows if tuple(r[:3]) in wanted], at, rule)

    @staticmethod
    def _loops(rows: Iterable[tuple[Any, ...]], at: dt.datetime, rule: LoopRule) -> list[FoundLoop]:
        """The rows (key, requests in the window, latest rowid, latest ts) that are loops
        to raise: enough requests, and one in this fixed window."""
        window = periods.usage_ts(loop_window(at, rule.minutes))
        return [
            (org, token, digest, count, latest)
            for org, token, digest, count, latest, last_ts in rows
            if count >= rule.requests and last_ts is not None and last_ts >= window
        ]


def evaluate(
    db: Database,
    at: dt.datetime | None = None,
    k: float = DEFAULT_K,
    loops: LoopRule | None = None,
    *,
    look_for_loops: bool = True,
    recent: RecentMinutes | None = None,
    recent_loops: RecentLoops | None = None,
) -> list[int]:
    """Raise whatever crossed; returns the ids of the alerts new this time. Runaway loops
    only with `look_for_loops`; `recent` and `recent_loops`: what the watcher keeps
    between evaluations (see `Watcher`)."""
    at = at or periods.now()
    search_loops = recent_loops.drafts if recent_loops is not None else loop_drafts
    drafts = [
        *budget_drafts(db, at),
        *anomaly_drafts(db, at, k, recent=recent),
        *error_drafts(db, at, k),
        *unpriced_drafts(db, at),
        *(search_loops(db, at, loops) if look_for_loops else ()),
    ]
    return record(db, drafts, at)


def record(db: Database, drafts: list[Draft], at: dt.datetime) -> list[int]:
    """Insert the drafts not raised before (the unique key drops repeats, from this
    worker or another); returns the ids of the new ones."""
    raised = utc_timestamp(at.timestamp())
    new = []
    with db.atomic():
        for d in drafts:
            cursor = db.execute(
                "insert or ignore into alerts (org_id, kind, scope, window, threshold, message, "
                "value, limit_value, raised_at) values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    d.org_id,
                    d.kind,
                    d.scope,
                    d.window,
                    d.threshold,
                    d.message,
                    d.value,
                    d.limit_value,
                    raised,
                ],
            )
            if cursor.rowcount:
                new.append(cursor.lastrowid)
    return new


Sender = Callable[[Target, str, str], str | None]


def deliver_due(
    db: Database, notify: NotifyFile, at: dt.datetime | None = None, sender: Sender = send
) -> int:
    """Send each undelivered alert to its organisation's URLs that have not had it yet;
    returns how many alerts were fully delivered."""
    at = at or periods.now()
    now = at.timestamp()
    oldest = utc_timestamp((at - RETRY_FOR).timestamp())
    due = db.execute(
        "select id, org_id, kind, message, attempts from alerts where delivered_at is null "
        "and raised_at >= ? and coalesce(next_attempt_at, 0) <= ? "
        "and coalesce(claimed_until, 0) < ? order by id",
        [oldest, now, now],
    ).fetchall()
    if not due:
        return 0
    targets = notify.targets()
    delivered = 0
    for alert_id, org_id, kind, message, attempts in due:
        mine = [t for t in targets if t.org_id == org_id]
        if not mine:
            continue  # sent once the organisation has somewhere to send it (within a day)
        with db.atomic():
            claimed = db.execute(
                "update alerts set claimed_until = ? where id = ? and delivered_at is null "
                "and coalesce(claimed_until, 0) < ?",
                [now + CLAIM_SECONDS, alert_id, now],
            ).rowcount
        if not claimed:
            continue  # another worker has it
        done = {
            row[0]
            for row in db.execute(
                "select url_id from alert_deliveries where alert_id = ? and ok = 1", [alert_id]
            )
        }
        failures = []
        for target in mine:
            if target.id in done:
                continue
            error = sender(target, f"LLM Monitor: {kind.replace('_', ' ')}", message)
            with db.atomic():
                db.execute(
                    "insert into alert_deliveries (alert_id, url_id, attempted_at, ok, error) "
                    "values (?, ?, ?, ?, ?)",
                    [alert_id, target.id, utc_timestamp(time.time()), int(error is None), error],
                )
            if error is not None:
                failures.append(error)
        with db.atomic():
            if failures:
                backoff = min(5.0 * 2**attempts, MAX_BACKOFF)
                db.execute(
                    "update alerts set attempts = attempts + 1, next_attempt_at = ?, "
                    "claimed_until = null, last_error = ? where id = ?",
                    [now + backoff, "; ".join(failures)[:500], alert_id],
                )
            else:
                delivered += 1
                db.execute(
                    "update alerts set attempts = attempts + 1, delivered_at = ?, "
                    "claimed_until = null, last_error = null where id = ?",
                    [utc_timestamp(time.time()), alert_id],
                )
    return delivered


def list_alerts(db: Database, org_id: int | None = None, limit: int = 200) -> list[dict]:
    where, params = ("where a.org_id = ?", [org_id]) if org_id is not None else ("", [])
    return list(
        db.query(
            "select a.id, a.raised_at, orgs.name as org, a.kind, a.threshold, a.message, "
            "a.delivered_at, a.attempts, a.last_error from alerts a "
            f"left join orgs on orgs.id = a.org_id {where} order by a.id desc limit ?",
            [*params, limit],
        )
    )


# Runaway loops are looked for in one evaluation of this many (the first included): their
# query groups the last 10 minutes of rows by body (1.4 s of CPU at 800 requests a
# second), and a loop judged over minutes loses little by being seen within one.
LOOPS_EVERY = 4


class Watcher:
    """Evaluates and delivers every `interval` seconds on its own thread (runaway loops
    in every `LOOPS_EVERY`th evaluation: once a minute at the default 15 s)."""

    def __init__(
        self,
        db_path: str | Path,
        interval: float = 15.0,
        clock: Callable[[], dt.datetime] = periods.now,
        k: float = DEFAULT_K,
    ) -> None:
        self.db_path = Path(db_path)
        self.interval = interval
        self.clock = clock
        self.k = k  # anomalies: how many times its usual an hour or a minute must be
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._evaluations = 0
        self._recent = RecentMinutes()
        self._loops = RecentLoops()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="llm-monitor-alerts", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
            self._thread = None

    def run_once(self) -> None:
        db = open_db(self.db_path, migrate=False, busy_timeout_ms=2000)
        loops = self._evaluations % LOOPS_EVERY == 0
        self._evaluations += 1
        try:
            evaluate(
                db,
                self.clock(),
                self.k,
                look_for_loops=loops,
                recent=self._recent,
                recent_loops=self._loops,
            )
        except Exception:
            self._loops.forget()  # its loops may not have been recorded: read all next time
            raise
        else:
            deliver_due(db, NotifyFile(notify_path(self.db_path)), self.clock())
        finally:
            db.conn.close()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.run_once()
            except (sqlite3.Error, OSError, ValueError) as e:
                logger.warning("llm-monitor: alert evaluation failed (%s); retrying", e)


def parse_k(value: str) -> float:
    """The anomaly factor k: a number above 1 and at most 1000 (`monitor_anomaly_factor`)."""
    try:
        k = float(value)
    except ValueError:
        k = math.nan
    if not (1 < k <= 1000):
        raise ValueError(
            f"monitor_anomaly_factor must be a number above 1 and at most 1000; got {value!r}"
        )
    return k
