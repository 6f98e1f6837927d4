"""Alerts with a real database and a local json:// receiver: each budget threshold once,
no duplicates from two evaluators, delivery retried until the receiver is up and then
exactly once, anomalies on a 10x spike and not on weekly seasonality; notification URLs
checked, kept private and shown redacted."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import random
import re
import sqlite3
import stat
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlite_utils import Database

from llm_monitor.cli import cli
from llm_monitor.controls.alerts import (
    RecentLoops,
    RecentMinutes,
    Watcher,
    _minute_counts,
    anomaly_drafts,
    deliver_due,
    error_drafts,
    evaluate,
    loop_drafts,
    parse_k,
    unpriced_drafts,
)
from llm_monitor.controls.gate import Gate, Hold, Refusal
from llm_monitor.controls.loops import LoopRule, body_digest
from llm_monitor.controls.notify import NotifyFile, notify_path
from llm_monitor.errors import NotFound
from llm_monitor.money.costs import load_price_book, price_row
from llm_monitor.store.database import open_db
from llm_monitor.store.recorder import write_rows
from tests.conftest import invoke, new_org, set_budget, usage_record
from tests.replay import StandInServer


class Receiver(StandInServer):
    """A json:// endpoint on 127.0.0.1: answers 503 while `down`, records what it accepts."""

    def __init__(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                status = 503 if server.down else 200
                if status == 200:
                    server.received.append(json.loads(body))
                else:
                    server.refused += 1
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

        super().__init__(("127.0.0.1", 0), Handler)
        self.down = False
        self.refused = 0
        self.received: list[dict[str, Any]] = []

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.server_address[1]}/hook"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def acme(fresh_db: Path) -> Path:
    new_org(fresh_db, "Acme")
    return fresh_db


def spend(db_path: Path, ts: str, usd_each: float, count: int = 1, **fields: Any) -> None:
    """`count` gpt-4o requests costing about `usd_each` each, through the recorder's own
    write (rows and rollups in one transaction)."""
    db = open_db(db_path)
    book = load_price_book(db)
    tokens = max(round(usd_each / 2.5e-6), 1)  # gpt-4o input: $2.50 per 1M
    rows = [
        price_row(
            usage_record(ts=ts, model="gpt-4o", input_tokens=tokens, output_tokens=0, **fields),
            book,
        )
        for _ in range(count)
    ]
    write_rows(db, rows)
    db.conn.close()


def test_each_budget_threshold_fires_once(acme: Path, receiver: Receiver) -> None:
    at = dt.datetime(2026, 6, 10, 12, tzinfo=dt.UTC)
    set_budget(acme, "10", "--soft")
    invoke(acme, "notify", "add", "--org", "Acme", receiver.url)
    db = open_db(acme)
    notify = NotifyFile(notify_path(acme))
    spend(acme, "2026-06-10T11:00:00.000Z", 5.2)
    assert len(evaluate(db, at)) == 1
    assert evaluate(db, at) == []  # once per crossing
    assert evaluate(open_db(acme), at) == []  # another worker: no duplicate
    spend(acme, "2026-06-10T11:30:00.000Z", 5.0)  # 102%: crosses 80 and 100 at once
    assert len(evaluate(db, at)) == 2
    assert deliver_due(db, notify, at) == 3
    assert deliver_due(db, notify, at) == 0
    messages = sorted(r["message"] for r in receiver.received)
    assert len(messages) == 3
    assert any("reached 100%" in m and "$10.20 of $10.00" in m for m in messages)
    assert all(r["title"] == "LLM Monitor: budget" for r in receiver.received)
    # The next month is a new window: the same thresholds may fire again there.
    july = dt.datetime(2026, 7, 1, 1, tzinfo=dt.UTC)
    assert evaluate(db, july) == []
    listed = json.loads(invoke(acme, "alerts", "list", "--json"))
    assert [a["threshold"] for a in listed] == ["100%", "80%", "50%"]
    assert all(a["delivered_at"] for a in listed)


def test_a_receiver_down_for_a_while_gets_the_alert_once(acme: Path, receiver: Receiver) -> None:
    at = dt.datetime(2026, 6, 10, 12, tzinfo=dt.UTC)
    invoke(acme, "budgets", "set", "--org", "Acme", "--period", "day", "--usd", "1", "--soft")
    invoke(acme, "notify", "add", "--org", "Acme", receiver.url)
    db = open_db(acme)
    notify = NotifyFile(notify_path(acme))
    spend(acme, "2026-06-10T11:00:00.000Z", 0.6)
    assert len(evaluate(db, at)) == 1
    receiver.down = True
    assert deliver_due(db, notify, at) == 0
    assert deliver_due(db, notify, at) == 0  # not before its backoff
    assert deliver_due(db, notify, at + dt.timedelta(seconds=6)) == 0  # second failure
    assert receiver.refused == 2
    receiver.down = False
    assert deliver_due(db, notify, at + dt.timedelta(seconds=8)) == 0  # backoff doubled
    assert deliver_due(db, notify, at + dt.timedelta(seconds=20)) == 1
    assert deliver_due(db, notify, at + dt.timedelta(seconds=60)) == 0
    assert len(receiver.received) == 1
    attempts = db.execute("select ok from alert_deliveries order by id").fetchall()
    assert attempts == [(0,), (0,), (1,)]
    # A day after it was raised, an undelivered alert is given up.
    spend(acme, "2026-06-10T11:10:00.000Z", 0.3)
    assert len(evaluate(db, at)) == 1  # 80%
    receiver.down = True
    assert deliver_due(db, notify, at + dt.timedelta(days=1, seconds=1)) == 0
    assert receiver.refused == 2  # not even tried


def hourly_history(db_path: Path, end: dt.datetime, weeks: int, seed: int = 3) -> None:
    """Weeks of ordinary traffic for one token: busier by day and on weekdays, each hour's
    count and each request's size varying."""
    rng = random.Random(seed)
    db = open_db(db_path)
    book = load_price_book(db)
    rows = []
    hour = end - dt.timedelta(weeks=weeks)
    while hour < end:
        daily = 0.3 + math.exp(-(((hour.hour - 14) / 4.5) ** 2))
        weekly = (1.0, 1.0, 1.0, 1.0, 0.92, 0.42, 0.38)[hour.weekday()]
        count = round(60 * daily * weekly * rng.lognormvariate(0, 0.15))
        for i in range(count):
            ts = hour + dt.timedelta(seconds=i * 3600 // max(count, 1))
            record = usage_record(
                ts=ts.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                model="gpt-4o",
                input_tokens=round(2000 * rng.lognormvariate(0, 0.5)),
                output_tokens=round(300 * rng.lognormvariate(0, 0.5)),
                user="alice@acme.example",
            )
            rows.append(price_row(record, book))
        hour += dt.timedelta(hours=1)
    write_rows(db, rows)
    db.conn.close()


def test_anomalies_fire_on_a_spike_and_not_on_seasonality(acme: Path) -> None:
    end = dt.datetime(2026, 6, 29, tzinfo=dt.UTC)  # a Monday
    hourly_history(acme, end, weeks=8)
    db = open_db(acme)
    quiet = []
    # Every hour of the last four weeks (each with four weeks behind it), judged when
    # complete and in its middle.
    for h in range(4 * 7 * 24):
        at = end - dt.timedelta(hours=h) - dt.timedelta(seconds=1)
        quiet += anomaly_drafts(db, at) + error_drafts(db, at)
        quiet += anomaly_drafts(db, at - dt.timedelta(minutes=29))  # and in its middle
    assert quiet == []
    # Ten times the usual spend in one hour of a Tuesday afternoon.
    at = dt.datetime(2026, 6, 30, 14, 40, tzinfo=dt.UTC)
    usual = db.execute(
        "select sum(cost_usd) from usage_hourly where hour = '2026-06-23T14'"
    ).fetchone()[0]
    spend(acme, "2026-06-30T14:30:00.000Z", usual / 60, count=600, user="alice@acme.example")
    assert anomaly_drafts(db, at, k=12) == []  # k is a setting: ten times is not twelve
    drafts = anomaly_drafts(db, at)
    assert {(d.kind, d.scope) for d in drafts} == {
        ("anomaly_spend", "org:1:token:1"),
        ("anomaly_spend", "org:1:model:gpt-4o"),
        ("anomaly_spend", "org:1:user:alice@acme.example"),
    }
    assert all(d.value > 5 * d.limit_value for d in drafts)
    # The watcher judges by its k (the proxy's monitor_anomaly_factor).
    Watcher(acme, clock=lambda: at, k=12).run_once()
    assert db.execute("select count(*) from alerts where kind like 'anomaly%'").fetchone()[0] == 0
    Watcher(acme, clock=lambda: at).run_once()
    thresholds = db.execute("select threshold from alerts where kind like 'anomaly%'").fetchall()
    assert thresholds == [("5x",)] * 3
    assert evaluate(db, at) == []
    # A minute with ten times the usual requests (about one a minute at 15:00), as a
    # second user: not a spend anomaly (the hour's spend is ordinary), a requests one.
    at = dt.datetime(2026, 6, 30, 15, 20, 30, tzinfo=dt.UTC)
    spend(acme, "2026-06-30T15:20:05.000Z", usual / 60, count=15, user="carol@acme.example")
    assert anomaly_drafts(db, at) == []  # 15 in a minute: under 20, no spike whatever the usual
    spend(acme, "2026-06-30T15:20:10.000Z", usual / 60, count=5, user="carol@acme.example")
    drafts = anomaly_drafts(db, at)
    assert {(d.kind, d.scope) for d in drafts} == {
        ("anomaly_requests", "org:1:token:1"),
        ("anomaly_requests", "org:1:model:gpt-4o"),
    }  # carol has no usual hour: not judged
    assert all(d.value == 20 and d.value > 5 * d.limit_value for d in drafts)
    assert "sent 20 requests in the minute 2026-06-30T15:20Z" in drafts[0].message
    assert len(evaluate(db, at)) == 2
    assert evaluate(db, at + dt.timedelta(minutes=1)) == []  # once an hour per key


def run(db: Path, *args: str):
    return CliRunner().invoke(cli, ["--db", str(db), *args])


def test_the_anomaly_factor_is_a_number_above_one() -> None:
    assert parse_k("7.5") == 7.5 and parse_k(" 5 ") == 5
    for bad in ("1", "0.5", "-3", "lots", "nan", "inf", "1001"):
        with pytest.raises(ValueError, match="monitor_anomaly_factor must be a number above 1"):
            parse_k(bad)


def test_notification_urls_are_checked_private_and_redacted(acme: Path, receiver: Receiver) -> None:
    secret = "slack://T000AAAA/B000BBBB/XXXXsecretXXXX"
    bad = run(acme, "notify", "add", "--org", "Acme", "nonsense://what")
    assert bad.exit_code == 1 and len(bad.output.strip().splitlines()) == 1
    assert not notify_path(acme).exists()  # nothing stored
    invoke(acme, "notify", "add", "--org", "Acme", secret)
    invoke(acme, "notify", "add", "--org", "Acme", receiver.url)
    path = notify_path(acme)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    listed = invoke(acme, "notify", "list")
    assert "XXXXsecretXXXX" not in listed and "B000BBBB" not in listed
    assert "slack://T0…" in listed
    dup = run(acme, "notify", "add", "--org", "Acme", secret)
    assert dup.exit_code == 1 and "already" in dup.output
    # `notify test` sends to each: the Slack one fails (never leaves 127.0.0.1? it is not
    # sent: removed first), the local receiver gets it.
    invoke(acme, "notify", "remove", "1")
    assert "sent" in invoke(acme, "notify", "test", "--org", "Acme")
    assert receiver.received[-1]["title"] == "LLM Monitor: test"
    # A file others may read is refused, not used.
    os.chmod(path, 0o644)
    refused = run(acme, "notify", "list")
    assert refused.exit_code == 1 and "chmod 600" in refused.output
    assert secret not in refused.output


def test_notification_urls_added_at_once_are_all_kept_and_removed_by_their_owner(
    tmp_path: Path,
) -> None:
    """The CLI and the dashboard may change the file at once: no add is lost, no id given
    twice; a removal names its organisation, and another's URL is not touched."""
    notify = NotifyFile(tmp_path / "n.json")

    def add(i: int) -> int:
        return notify.add(1 + i % 2, f"json://127.0.0.1:{9000 + i}/hook")

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(add, range(40)))
    assert sorted(ids) == list(range(1, 41))
    assert len(notify.targets()) == 40
    theirs = next(t for t in notify.targets() if t.org_id == 2)
    with pytest.raises(NotFound):
        notify.remove(theirs.id, org_id=1)
    assert theirs in notify.targets(2)
    notify.remove(theirs.id, org_id=2)
    assert theirs not in notify.targets(2) and len(notify.targets()) == 39


def test_body_digest_is_short_stable_and_bounded() -> None:
    body = b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "again"}]}'
    assert body_digest(body) == body_digest(bytes(body))
    assert body_digest(body) != body_digest(body.replace(b"again", b"Again"))
    assert body_digest(b"") is None and body_digest(None) is None
    assert -(2**63) <= body_digest(body) < 2**63  # an SQLite INTEGER
    # Up to 1 MiB a body is read whole: one byte changed in its middle tells it apart.
    half = b"x" * (512 * 1024)
    assert body_digest(half) != body_digest(half[: 256 * 1024] + b"y" + half[256 * 1024 + 1 :])
    big = b"x" * (3 * 1024 * 1024)
    # Over 1 MiB only the length, head and tail are read: they still tell bodies apart.
    assert body_digest(big) != body_digest(big[:-1] + b"y")
    assert body_digest(big) != body_digest(big + b"x")
    assert body_digest(big) != body_digest(b"y" + big[1:])


def loop(db_path: Path, start: dt.datetime, count: int, seconds: float, **fields: Any) -> None:
    """`count` requests with the same body, `seconds` apart, from `start`."""
    db = open_db(db_path)
    book = load_price_book(db)
    rows = []
    for i in range(count):
        ts = start + dt.timedelta(seconds=i * seconds)
        record = usage_record(
            ts=ts.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            model="gpt-4o",
            input_tokens=100,
            output_tokens=10,
            **{"body_digest": body_digest(b'{"same": true}'), **fields},
        )
        rows.append(price_row(record, book))
    write_rows(db, rows)
    db.conn.close()


def test_a_runaway_loop_is_raised_once_per_window(acme: Path) -> None:
    start = dt.datetime(2026, 6, 10, 12, 1, tzinfo=dt.UTC)
    loop(acme, start, 19, 15)  # 19 in 4.5 minutes: not yet
    loop(acme, start, 25, 10, token_id=None, body_digest=body_digest(b"other"))  # no token
    loop(acme, start, 5, 15, body_digest=body_digest(b"varied 1"))
    loop(acme, start, 5, 15, body_digest=body_digest(b"varied 2"))
    db = open_db(acme)
    at = start + dt.timedelta(minutes=5)
    drafts = loop_drafts(db, at)
    assert [(d.scope.split(":body:")[0], d.value) for d in drafts] == [("org:1:token:0", 25)]
    loop(acme, start + dt.timedelta(seconds=19 * 15), 1, 1)  # the 20th
    drafts = loop_drafts(db, at)
    assert sorted(d.scope.split(":body:")[0] for d in drafts) == ["org:1:token:0", "org:1:token:1"]
    mine = next(d for d in drafts if d.scope.startswith("org:1:token:1:"))
    assert mine.window == "2026-06-10T12:00/10m" and mine.threshold == "20/10m"
    assert "monitor token 1 sent the same request body 20 times" in mine.message
    assert len(evaluate(db, at)) == 2
    assert evaluate(db, at + dt.timedelta(minutes=1)) == []  # once per window
    assert evaluate(open_db(acme), at) == []  # another worker: no duplicate
    # Stopped: the next window (12:10) sees its last minutes but nothing new in it.
    assert loop_drafts(db, dt.datetime(2026, 6, 10, 12, 11, tzinfo=dt.UTC)) == []
    # Going on into the next window: raised once more there.
    loop(acme, dt.datetime(2026, 6, 10, 12, 10, 30, tzinfo=dt.UTC), 20, 10)
    later = dt.datetime(2026, 6, 10, 12, 14, tzinfo=dt.UTC)
    assert len(evaluate(db, later)) == 1
    assert evaluate(db, later) == []
    # Half an hour on, the window has moved past all of it.
    assert loop_drafts(db, dt.datetime(2026, 6, 10, 12, 40, tzinfo=dt.UTC)) == []


def test_the_watcher_looks_for_loops_in_one_evaluation_of_four(acme: Path) -> None:
    """The loop query groups the last 10 minutes of rows by body: the watcher runs it in
    its first evaluation and then in every fourth (once a minute at the default 15 s)."""
    start = dt.datetime(2026, 6, 10, 12, 1, tzinfo=dt.UTC)
    loop(acme, start, 20, 10)
    watcher = Watcher(acme, interval=15, clock=lambda: start + dt.timedelta(minutes=5))
    db = open_db(acme)

    def loops_raised() -> int:
        return db.execute("select count(*) from alerts where kind = 'runaway_loop'").fetchone()[0]

    looked = []
    for _ in range(9):
        db.execute("delete from alerts")
        db.conn.commit()
        loop(acme, start + dt.timedelta(minutes=4), 1, 1)  # the loop goes on
        watcher.run_once()
        looked.append(loops_raised())
    assert looked == [1, 0, 0, 0, 1, 0, 0, 0, 1]


def loop_traffic(seed: int) -> list[tuple[dt.datetime, dt.datetime, int | None, int]]:
    """45 minutes of requests as (ts, recorded at, monitor token, body digest): a new body
    every 2 s, thirty bodies sent now and then, four loops (one just under the rule, now
    and then; one a burst), from token 1, token 2 and none; one request in twenty recorded
    late."""
    rng = random.Random(seed)
    start = dt.datetime(2026, 6, 10, 12, 0, 30, tzinfo=dt.UTC)
    pool = [rng.getrandbits(62) for _ in range(30)]
    sent: list[tuple[float, int | None, int]] = []
    sent += [(s, rng.choice([1, 2, None]), rng.getrandbits(62)) for s in range(0, 2700, 2)]
    sent += [(s + 0.5, rng.choice([1, None]), rng.choice(pool)) for s in range(0, 2700, 5)]
    sent += [(s + 0.2, 1, 101) for s in range(300, 1500, 20)]  # 30 in 10 minutes
    sent += [(s + 0.7, None, 102) for s in range(720, 2400, 25)]  # 24 in 10 minutes
    sent += [(s + 0.9, 2, 103) for s in range(1200, 2700, 31)]  # 19 or 20 in 10 minutes
    # A burst at 12:15:30, and one more at 12:24: raised again in the window of 12:20,
    # though no part since the burst held two of it.
    sent += [(900 + 2 * i + 0.4, 2, 104) for i in range(21)] + [(1410.4, 2, 104)]
    requests = []
    for second, token, digest in sent:
        ts = start + dt.timedelta(seconds=second)
        late = rng.uniform(5, 90) if rng.random() < 0.05 else 0.3
        requests.append((ts, ts + dt.timedelta(seconds=late), token, digest))
    return sorted(requests, key=lambda r: r[1])


@pytest.mark.parametrize("rule", [LoopRule(20, 10), LoopRule(9, 10)])
def test_the_watcher_raises_the_loops_a_whole_read_raises(acme: Path, rule: LoopRule) -> None:
    """Searching only the rows recorded since the last search (`RecentLoops`) raises each
    loop when reading the whole window does, with the same count, search after search;
    with 20 requests to a loop it reads the window whole only the first time (with 9, no
    more than the parts a window holds, it falls back to that now and then)."""
    invoke(acme, "tokens", "create", "--org", "Acme")  # token 2
    db = open_db(acme)
    book = load_price_book(db)
    requests = loop_traffic(seed=7)
    recent, whole_reads = RecentLoops(), []
    raised: dict[str, dict[tuple[str, str], tuple[int, float | None]]] = {"whole": {}, "recent": {}}
    at = dt.datetime(2026, 6, 10, 12, 1, 10, tzinfo=dt.UTC)
    for search in range(47):
        recorded = [r for r in requests if r[1] <= at]
        requests = requests[len(recorded) :]
        rows = [
            price_row(
                usage_record(
                    ts=ts.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
                    token_id=token,
                    model="gpt-4o",
                    path="/v1/chat/completions",
                    input_tokens=100,
                    output_tokens=10,
                    body_digest=digest,
                ),
                book,
            )
            for ts, _, token, digest in recorded
        ]
        write_rows(db, rows)
        db.conn.set_trace_callback(whole_reads.append)
        found = {"whole": loop_drafts(db, at, rule), "recent": recent.drafts(db, at, rule)}
        db.conn.set_trace_callback(None)
        for way, drafts in found.items():
            for d in drafts:
                raised[way].setdefault((d.scope, d.window), (search, d.value))
        at += dt.timedelta(seconds=60 + search % 3 * 7)
    assert raised["recent"] == raised["whole"]
    assert len({scope.split(":body:")[1] for scope, _ in raised["whole"]}) == 4, raised
    assert len([scope for scope, _ in raised["whole"] if scope.endswith(f"{104:016x}")]) == 2
    whole = [sql for sql in whole_reads if "+rowid <=" in sql and "json_each" not in sql]
    assert len(whole) == 1 if rule.requests == 20 else 1 < len(whole) < 47


def test_a_burst_is_remembered_for_as_long_as_it_is_in_the_window(acme: Path) -> None:
    """A loop's burst, then one request nine minutes on, in the next fixed window: the one
    request alone brings it back to be counted, since the burst is remembered (for ten
    minutes from the search that read it) and raised again, as a whole read raises it."""
    rule, recent = LoopRule(20, 10), RecentLoops()
    db = open_db(acme)
    at = dt.datetime(2026, 6, 10, 12, 10, 5, tzinfo=dt.UTC)
    assert recent.drafts(db, at, rule) == []
    loop(acme, dt.datetime(2026, 6, 10, 12, 15, tzinfo=dt.UTC), 21, 1)
    at = dt.datetime(2026, 6, 10, 12, 16, tzinfo=dt.UTC)
    [first] = recent.drafts(db, at, rule)
    assert first.window == "2026-06-10T12:10/10m" and first.value == 21
    for minute in range(17, 25):
        assert recent.drafts(db, at.replace(minute=minute), rule) == []
    loop(acme, dt.datetime(2026, 6, 10, 12, 24, 30, tzinfo=dt.UTC), 1, 1)
    at = dt.datetime(2026, 6, 10, 12, 24, 50, tzinfo=dt.UTC)
    [again] = recent.drafts(db, at, rule)
    assert again.window == "2026-06-10T12:20/10m" and again.value == 22
    assert [(d.scope, d.value) for d in loop_drafts(db, at, rule)] == [(again.scope, 22)]


def test_a_loops_last_request_in_the_second_of_the_search_counts(acme: Path) -> None:
    """The search reads the rows recorded up to now, one of them stamped in the very second
    of the search: it counts, or a loop that then stops would never be raised (the rows
    are not read again)."""
    rule, recent = LoopRule(20, 10), RecentLoops()
    db = open_db(acme)
    assert recent.drafts(db, dt.datetime(2026, 6, 10, 12, 10, 5, tzinfo=dt.UTC), rule) == []
    loop(acme, dt.datetime(2026, 6, 10, 12, 15, tzinfo=dt.UTC), 19, 1)
    last = usage_record(
        ts="2026-06-10T12:16:00.300Z", model="gpt-4o", body_digest=body_digest(b'{"same": true}')
    )
    write_rows(db, [price_row(last, load_price_book(db))])
    searches = [
        dt.datetime(2026, 6, 10, 12, 16, 0, 500_000, tzinfo=dt.UTC),
        dt.datetime(2026, 6, 10, 12, 17, tzinfo=dt.UTC),
    ]
    found = [d.value for at in searches for d in recent.drafts(db, at, rule)]
    assert found == [20]


def test_the_loop_rule_comes_from_the_environment(
    acme: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = dt.datetime(2026, 6, 10, 12, 1, tzinfo=dt.UTC)
    loop(acme, start, 6, 50)  # 6 in 5 minutes
    db = open_db(acme)
    at = start + dt.timedelta(minutes=5)
    assert loop_drafts(db, at) == []
    monkeypatch.setenv("LLM_MONITOR_LOOP_REQUESTS", "5")
    monkeypatch.setenv("LLM_MONITOR_LOOP_MINUTES", "3")
    assert loop_drafts(db, at) == []  # only 4 within the last 3 minutes
    monkeypatch.setenv("LLM_MONITOR_LOOP_MINUTES", "5")
    [draft] = loop_drafts(db, at)
    assert draft.threshold == "5/5m" and draft.window == "2026-06-10T12:05/5m"
    monkeypatch.setenv("LLM_MONITOR_LOOP_REQUESTS", "lots")  # bad: the default (20)
    assert LoopRule.from_env() == LoopRule(20, 5)
    assert loop_drafts(db, at) == []


def test_a_model_without_a_price_is_raised_once_a_day_from_the_rollup(acme: Path) -> None:
    """Each organisation's models seen today with no price, once a day; a row whose usage
    was never seen is not one (its model may well have a price). Read from the day's
    rollup: the evaluation reads no `usage` row for it, however many the day holds."""
    at = dt.datetime(2026, 6, 10, 12, tzinfo=dt.UTC)
    db = open_db(acme)
    book = load_price_book(db)
    today, yesterday = "2026-06-10T08:00:00.000Z", "2026-06-09T23:00:00.000Z"
    seen = [(yesterday, "no-such-model-1"), (today, "no-such-model-2"), (today, "no-such-model-2")]
    write_rows(
        db,
        [
            price_row(usage_record(ts=ts, model=m, input_tokens=10, output_tokens=1), book)
            for ts, m in [*seen, (today, "gpt-4o")]
        ]
        + [price_row(usage_record(ts=today, model="gpt-4o", outcome="client_disconnected"), book)],
    )
    [draft] = [d for d in unpriced_drafts(db, at)]
    assert (draft.org_id, draft.kind, draft.scope, draft.window) == (
        1,
        "unpriced_model",
        "org:1:openai/no-such-model-2",
        "2026-06-10",
    )
    assert "openai model no-such-model-2 has no price" in draft.message
    assert len(evaluate(db, at)) == 1
    assert evaluate(db, at + dt.timedelta(hours=1)) == []  # once a day
    read: set[str] = set()

    def reads(action: int, table: str | None, *_: object) -> int:
        if action == sqlite3.SQLITE_READ and table:
            read.add(table)
        return sqlite3.SQLITE_OK

    db.conn.set_authorizer(reads)
    assert len(unpriced_drafts(db, at)) == 1
    db.conn.set_authorizer(None)
    assert read == {"usage_daily_no_price"}


def usage_reads(db: Database, at: dt.datetime, recent: RecentMinutes | None = None) -> list:
    """The statements an evaluation at `at` runs that read `usage` itself, as run, each
    with its query plan."""
    statements: list[str] = []
    db.conn.set_trace_callback(statements.append)
    evaluate(db, at, recent=recent)
    db.conn.set_trace_callback(None)
    return [
        (sql, " ".join(row[3] for row in db.execute(f"explain query plan {sql}")))
        for sql in statements
        if re.search(r"\bfrom usage\b", sql)
    ]


def test_every_read_of_usage_is_a_range_of_the_index_on_ts(acme: Path) -> None:
    """What an evaluation reads from `usage` itself (a minute's requests, loops) is a range
    of its index on `ts`, never the whole table: the statements it runs, as run."""
    spend(acme, "2026-06-10T11:59:30.000Z", 0.01, count=3, user="alice@acme.example")
    reads = usage_reads(open_db(acme), dt.datetime(2026, 6, 10, 12, 0, 30, tzinfo=dt.UTC))
    assert len(reads) == 2, reads  # the minutes' requests, by token, user and model; loops
    for sql, plan in reads:
        assert "USING INDEX idx_usage_ts (ts>? AND ts<?)" in plan, (sql, plan)


def test_the_watcher_reads_each_row_of_its_minutes_once(acme: Path) -> None:
    """The watcher keeps the minutes it judges between evaluations: after its first read
    (a range of the index on `ts`) it reads only the rows added since, by rowid, and
    judges the same minutes a new evaluation would, a row recorded late included."""
    at = dt.datetime(2026, 6, 10, 12, 1, 30, tzinfo=dt.UTC)
    db, recent = open_db(acme), RecentMinutes()
    spend(acme, "2026-06-10T11:59:50.000Z", 0.01, count=2, user="alice@acme.example")
    spend(acme, "2026-06-10T12:00:30.000Z", 0.01, count=3, user="alice@acme.example")
    first = usage_reads(db, at, recent)
    assert any("USING INDEX idx_usage_ts (ts>?)" in plan for _, plan in first), first
    spend(acme, "2026-06-10T12:01:10.000Z", 0.02, count=4, user="bob@acme.example")
    spend(acme, "2026-06-10T12:00:40.000Z", 0.01, count=1)  # late, and without a user
    later = usage_reads(db, at, recent)
    minute_reads = [plan for sql, plan in later if "substr(ts, 1, 16)" in sql]
    assert minute_reads == [
        "SEARCH usage USING INTEGER PRIMARY KEY (rowid>? AND rowid<?) USE TEMP B-TREE FOR GROUP BY"
    ]
    start, end = "2026-06-10T12:00:00.000Z", "2026-06-10T12:01:31.000Z"
    kept = cents(recent.read(db, start, end))
    assert kept == cents(_minute_counts(db, start, end))
    assert kept["token"] == {
        (1, 1, "2026-06-10T12:00"): (4.0, 4),
        (1, 1, "2026-06-10T12:01"): (8.0, 4),
    }
    assert kept["user"] == {
        (1, "alice@acme.example", "2026-06-10T12:00"): (3.0, 3),
        (1, "bob@acme.example", "2026-06-10T12:01"): (8.0, 4),
    }
    # An hour later the minutes before are gone; evaluating an earlier moment reads anew.
    later_hour = recent.read(db, "2026-06-10T13:00:00.000Z", "2026-06-10T13:00:31.000Z")
    assert later_hour == {"token": {}, "user": {}, "model": {}}
    assert cents(recent.read(db, start, end)) == kept


def cents(counts: dict[str, dict]) -> dict[str, dict]:
    """Minute counts with spend in cents, rounded: sums added in another order differ in
    the last bits."""
    return {
        what: {key: (round(cost * 100, 6), requests) for key, (cost, requests) in minutes.items()}
        for what, minutes in counts.items()
    }


def test_a_hard_budget_raises_its_100_percent_alert_when_it_starts_refusing(
    acme: Path, receiver: Receiver
) -> None:
    """A hard budget's recorded spend never reaches its limit, so its 100% is raised by
    the first request it refuses for want of budget: once per window, whichever of two
    workers refuses, and delivered once."""
    set_budget(acme, "0.05")
    invoke(acme, "notify", "add", "--org", "Acme", receiver.url)
    gates = [Gate(acme), Gate(acme)]
    for gate in gates:
        gate.refresh()
    kw = dict(org_id=1, token_id=1, user=None, tags=None, provider="openai", model="gpt-4o")
    db = open_db(acme)
    # One request too large for the whole budget is refused at $0 spent: no 100% alert.
    huge = gates[0].admit(**kw, billable=True, prompt_bytes=1000, max_output=10_000_000)
    assert isinstance(huge, Refusal) and huge.code == "budget_exceeded"
    gates[0].refresh()
    assert db.execute("select count(*) from alerts").fetchone()[0] == 0
    refused = 0
    for i in range(200):
        gate = gates[i % 2]
        verdict = gate.admit(**kw, billable=True, prompt_bytes=1000, max_output=100)
        if isinstance(verdict, Hold):
            gate.settle_cost(verdict, 0.0015)
        elif verdict.code == "budget_exceeded":
            refused += 1
        gate.refresh()
        if refused == 0:
            # Before refusing, nothing: the evaluator never sees 100% recorded.
            assert db.execute("select count(*) from alerts").fetchone()[0] == 0
            assert evaluate(db, dt.datetime.now(dt.UTC)) == []
    assert refused > 50
    rows = db.execute("select kind, scope, threshold, message from alerts").fetchall()
    assert len(rows) == 1, rows
    kind, scope, threshold, message = rows[0]
    assert (kind, scope, threshold) == ("budget", "budget:1", "100%")
    assert "Acme: hard budget 1 (org, month) reached 100% and is refusing requests" in message
    assert "of $0.05 spent or reserved" in message
    assert evaluate(db, dt.datetime.now(dt.UTC)) == []
    assert deliver_due(db, NotifyFile(notify_path(acme))) == 1
    assert [r["message"] for r in receiver.received] == [message]
