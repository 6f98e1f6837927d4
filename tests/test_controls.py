"""Budgets and rate limits at the level of the gate and the lease store, with a real
database and an injected clock: period boundaries, changes, unpriced models, several
holders, and the CLI's refusals of bad input."""

from __future__ import annotations

import datetime as dt
import json
import random
import sqlite3
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from llm_monitor.cli import cli
from llm_monitor.controls.budgets import (
    NANOS,
    SpendScope,
    raw_recorded_nanos,
    raw_unpriced_requests,
    recorded_nanos,
    unpriced_requests,
)
from llm_monitor.controls.gate import NANOS_PER_RATE, Gate, Hold, Refusal
from llm_monitor.controls.leases import SqliteLeaseStore
from llm_monitor.money.output_limits import shipped_output_limits
from llm_monitor.money.prices import OUTPUT_LIMITS_FILE, SHIPPED_PRICES, shipped_prices
from llm_monitor.store.database import open_db
from llm_monitor.store.recorder import write_rows
from llm_monitor.usage import utc_timestamp
from tests.conftest import invoke, new_org, set_budget, usage_record


class Clock:
    def __init__(self, at: dt.datetime) -> None:
        self.at = at

    def __call__(self) -> dt.datetime:
        return self.at


def admit(gate: Gate, prompt_bytes: int = 1000, max_output: int = 100, **kw: object):
    values = {
        "org_id": 1,
        "token_id": 1,
        "user": None,
        "tags": None,
        "provider": "openai",
        "model": "gpt-4o",
        "billable": True,
        "prompt_bytes": prompt_bytes,
        "max_output": max_output,
        **kw,
    }
    return gate.admit(**values)  # type: ignore[arg-type]


def reservation(gate: Gate, prompt_bytes: int = 1000, max_output: int = 100) -> int:
    rates = gate._rates_for("openai", "gpt-4o")
    assert rates is not None
    return rates[0] * prompt_bytes + rates[1] * max_output


@pytest.fixture
def acme(fresh_db: Path) -> Path:
    new_org(fresh_db, "Acme")
    return fresh_db


def usd(nanos: int) -> str:
    return str(nanos / NANOS)


def test_a_budget_resets_at_its_period_boundary(acme: Path) -> None:
    clock = Clock(dt.datetime(2026, 3, 9, 23, 59, 30, tzinfo=dt.UTC))
    invoke(acme, "budgets", "set", "--org", "Acme", "--period", "day", "--usd", "1")
    gate = Gate(acme, clock=clock)
    gate.refresh()
    each = reservation(gate)
    invoke(
        acme,
        "budgets",
        "set",
        "--org",
        "Acme",
        "--period",
        "day",
        "--replace",
        "--usd",
        usd(2 * each),
    )
    for _ in range(2):  # the background thread refreshes after each (and every 0.25 s)
        gate.refresh()
        assert isinstance(admit(gate), Hold)
    gate.refresh()
    refused = admit(gate)
    assert isinstance(refused, Refusal) and refused.code == "budget_exceeded"
    assert refused.retry_after == 30  # seconds to midnight UTC
    assert "resets at 2026-03-10T00:00:00.000Z" in refused.message
    clock.at += dt.timedelta(seconds=31)  # the next day: no sleep, no restart
    gate.refresh()
    assert isinstance(admit(gate), Hold)
    gate.refresh()
    conn = sqlite3.connect(acme)
    windows = dict(conn.execute("select window, sum(used) from control_leases group by window"))
    assert windows == {"2026-03-09": 2 * each, "2026-03-10": each}


def test_the_next_window_is_held_before_it_begins(acme: Path) -> None:
    """Refreshed a moment before midnight, a worker already holds a share of the next
    day: the first request after the boundary is not refused for want of one."""
    clock = Clock(dt.datetime(2026, 3, 9, 23, 59, 59, 900_000, tzinfo=dt.UTC))
    invoke(acme, "budgets", "set", "--org", "Acme", "--period", "day", "--usd", "1")
    invoke(acme, "limits", "set", "--org", "Acme", "--rpm", "100")
    gate = Gate(acme, clock=clock)
    gate.refresh()
    assert isinstance(admit(gate), Hold)
    clock.at += dt.timedelta(milliseconds=200)
    assert isinstance(admit(gate), Hold)
    conn = sqlite3.connect(acme)
    gate.refresh()
    windows = sorted(row[0] for row in conn.execute("select window from control_leases"))
    assert windows == ["2026-03-09", "2026-03-09T23:59", "2026-03-10", "2026-03-10T00:00"]


def test_settled_cost_frees_what_was_reserved(acme: Path) -> None:
    set_budget(acme, "1")
    gate = Gate(acme)
    gate.refresh()
    each = reservation(gate)
    set_budget(acme, usd(2 * each), "--replace")
    gate.refresh()
    first = admit(gate)
    gate.refresh()
    second = admit(gate)
    gate.refresh()
    assert isinstance(first, Hold) and isinstance(second, Hold)
    assert isinstance(admit(gate), Refusal)
    gate.settle_cost(first, each / 2 / NANOS)  # cost half of its worst case
    gate.settle_cost(second, None)  # usage never seen: keeps its reservation
    gate.refresh()
    third = admit(gate, prompt_bytes=400, max_output=40)
    assert isinstance(third, Hold)
    assert isinstance(admit(gate, prompt_bytes=400, max_output=40), Refusal)
    gate.release(third)  # never forwarded: its reservation comes back
    assert isinstance(admit(gate, prompt_bytes=400, max_output=40), Hold)


def test_changes_and_removals_apply_on_the_next_refresh(acme: Path) -> None:
    gate = Gate(acme)
    gate.refresh()
    assert admit(gate) is None  # no budget: nothing reserved, nothing refused
    invoke(acme, "budgets", "set", "--org", "Acme", "--period", "week", "--usd", "0.000001")
    gate.refresh()
    assert isinstance(admit(gate), Refusal)
    invoke(acme, "budgets", "set", "--org", "Acme", "--period", "week", "--usd", "100", "--replace")
    gate.refresh()
    assert isinstance(admit(gate), Hold)
    invoke(acme, "budgets", "remove", "1")
    gate.refresh()
    assert admit(gate) is None


def test_a_gate_without_rules_reads_only_whether_one_was_set(acme: Path) -> None:
    """Four times a second, per worker: with no hard budget and no rate limit anywhere,
    the gate reads only the controls' change version, until a budget is set."""
    invoke(acme, "budgets", "set", "--org", "Acme", "--period", "day", "--usd", "5", "--soft")
    gate = Gate(acme)
    gate.refresh()
    statements: list[str] = []
    with gate._reader.reading() as conn:
        conn.set_trace_callback(statements.append)
    gate.refresh()
    gate.refresh()
    assert statements == ["select version from change_versions where name = 'controls'"] * 2
    invoke(acme, "limits", "set", "--org", "Acme", "--rpm", "1")
    gate.refresh()
    assert isinstance(admit(gate), Hold)
    assert isinstance(admit(gate), Refusal)
    invoke(acme, "limits", "remove", "1")
    gate.refresh()
    assert admit(gate) is None


def test_scopes_match_their_own_requests(acme: Path) -> None:
    invoke(
        acme,
        "budgets",
        "set",
        "--org",
        "Acme",
        "--user",
        "alice",
        "--period",
        "day",
        "--usd",
        "0.000001",
    )
    invoke(
        acme,
        "budgets",
        "set",
        "--org",
        "Acme",
        "--tag",
        "team=search",
        "--period",
        "day",
        "--usd",
        "0.000001",
    )
    gate = Gate(acme)
    gate.refresh()
    assert admit(gate, user="bob") is None
    assert isinstance(admit(gate, user="alice"), Refusal)
    assert isinstance(admit(gate, tags=json.dumps({"team": "search"})), Refusal)
    assert admit(gate, tags=json.dumps({"team": "ads"})) is None


def test_an_unpriced_model_is_refused_or_let_through_as_the_budget_says(acme: Path) -> None:
    invoke(acme, "budgets", "set", "--org", "Acme", "--period", "day", "--usd", "10")
    gate = Gate(acme)
    gate.refresh()
    refused = admit(gate, model="no-such-model-xyz")
    assert isinstance(refused, Refusal) and refused.code == "budget_unpriced_model"
    invoke(
        acme,
        "budgets",
        "set",
        "--org",
        "Acme",
        "--period",
        "day",
        "--usd",
        "10",
        "--replace",
        "--unpriced",
        "allow",
    )
    gate.refresh()
    hold = admit(gate, model="no-such-model-xyz")
    assert isinstance(hold, Hold) and hold.cost_parts[0][1] == 0


def test_several_holders_never_take_more_than_the_limit(acme: Path) -> None:
    """Three gates (three workers) spend one budget at random: whatever they do, every
    slice together stays within it, and so does what they spent."""
    set_budget(acme, "1")
    gates = [Gate(acme) for _ in range(3)]
    for gate in gates:
        gate.refresh()
    each = reservation(gates[0])
    limit = 25 * each
    set_budget(acme, usd(limit), "--replace")
    for gate in gates:  # each gives back what it took of the old amount
        gate.refresh()
    rng = random.Random(5)
    holds: list[tuple[Gate, Hold]] = []
    spent = 0
    conn = sqlite3.connect(acme)
    for _ in range(400):
        gate = rng.choice(gates)
        action = rng.random()
        if action < 0.5:
            verdict = admit(gate)
            if isinstance(verdict, Hold):
                holds.append((gate, verdict))
        elif action < 0.8 and holds:
            owner, hold = holds.pop(rng.randrange(len(holds)))
            cost = rng.randint(0, each)
            spent += cost
            owner.settle_cost(hold, cost / NANOS)
        else:
            gate.refresh()
        taken = conn.execute("select coalesce(sum(granted), 0) from control_leases").fetchone()[0]
        assert taken <= limit
    assert spent <= limit
    assert spent > limit // 2  # and the budget was used, not sat on


def test_rate_limits_count_requests_and_tokens_per_minute(acme: Path) -> None:
    clock = Clock(dt.datetime(2026, 3, 9, 12, 0, 10, tzinfo=dt.UTC))
    invoke(acme, "limits", "set", "--token", "1", "--rpm", "3", "--tpm", "100000")
    gate = Gate(acme, clock=clock)
    gate.refresh()
    for _ in range(3):
        gate.refresh()
        assert isinstance(admit(gate, prompt_bytes=10, max_output=10), Hold)
    gate.refresh()
    refused = admit(gate, prompt_bytes=10, max_output=10)
    assert isinstance(refused, Refusal) and refused.code == "rate_limit_exceeded"
    assert refused.retry_after == 50
    assert isinstance(admit(gate, prompt_bytes=10, max_output=10, token_id=2), type(None))
    big = admit(gate, prompt_bytes=200_000, max_output=10, token_id=1)
    assert isinstance(big, Refusal)
    clock.at += dt.timedelta(minutes=1)
    gate.refresh()
    assert isinstance(admit(gate, prompt_bytes=10, max_output=10), Hold)


def run(db: Path, *args: str):
    return CliRunner().invoke(cli, ["--db", str(db), *args])


@pytest.mark.parametrize(
    "args",
    [
        ["--org", "Acme", "--period", "month", "--usd", "-5"],
        ["--org", "Acme", "--period", "month", "--usd", "lots"],
        ["--org", "Acme", "--period", "month", "--usd", "nan"],
        ["--org", "Acme", "--period", "year", "--usd", "5"],
        ["--org", "Acme", "--period", "2026-05-01..2026-04-01", "--usd", "5"],
        ["--org", "Nobody", "--period", "month", "--usd", "5"],
        ["--token", "99", "--period", "month", "--usd", "5"],
        ["--org", "Acme", "--tag", "no-equals", "--period", "month", "--usd", "5"],
        ["--org", "Acme", "--user", "a", "--tag", "a=b", "--period", "month", "--usd", "5"],
        ["--org", "Acme", "--period", "month", "--usd", "5", "--alert-at", "80,x"],
    ],
)
def test_bad_budgets_get_one_line_and_store_nothing(acme: Path, args: list[str]) -> None:
    result = run(acme, "budgets", "set", *args)
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    assert "Traceback" not in result.output
    assert sqlite3.connect(acme).execute("select count(*) from budgets").fetchone()[0] == 0


def test_one_budget_of_a_kind_per_scope_and_period(acme: Path) -> None:
    set_budget(acme, "500")
    set_budget(acme, "400", "--soft")
    second = run(acme, "budgets", "set", "--org", "Acme", "--period", "month", "--usd", "600")
    assert second.exit_code == 1
    assert second.output.strip() == (
        "Error: a hard month budget for this scope exists already (budget 1); change it "
        "with --replace or remove it first"
    )
    rows = json.loads(invoke(acme, "budgets", "list", "--json"))
    assert [(r["kind"], r["limit_usd"]) for r in rows] == [("hard", 500.0), ("soft", 400.0)]
    assert rows[0]["left_usd"] == 500.0 and rows[0]["resets_at"].endswith("T00:00:00.000Z")


def test_bad_limits_get_one_line_and_store_nothing(acme: Path) -> None:
    for args in (
        ["--org", "Acme"],
        ["--org", "Acme", "--rpm", "0"],
        ["--token", "x", "--rpm", "5"],
        ["--org", "Acme", "--rpm", "lots"],
        ["--org", "Acme", "--tpm", "1.5"],
        ["--org", "Acme", "--rpm", "10", "--tpm", "-3"],
    ):
        result = run(acme, "limits", "set", *args)
        lines = result.output.strip().splitlines()
        assert result.exit_code != 0 and len(lines) == 1, result.output
        assert lines[0].startswith("Error:"), result.output
    assert sqlite3.connect(acme).execute("select count(*) from rate_limits").fetchone()[0] == 0


def record_spend(db_path: Path, usd: float, ts: str, **fields: object) -> None:
    """A usage row of `usd` recorded at `ts`, through the recorder's own write."""
    db = open_db(db_path)
    try:
        write_rows(db, [{**usage_record(ts=ts, **fields).model_dump(), "cost_usd": usd}])
    finally:
        db.conn.close()


def test_spend_recorded_before_a_budget_counts_against_it(acme: Path) -> None:
    """$2.50 recorded this month, then a $3 hard monthly budget: only what is left of it
    is granted, never $3 more; a row recorded late (its request was in flight when the
    leases began) counts once the amount changes."""
    clock = Clock(dt.datetime.now(dt.UTC))
    this_month = clock.at.strftime("%Y-%m-01T00:00:00.000Z")
    record_spend(acme, 2.5, this_month)
    record_spend(acme, 7.0, "2020-01-01T00:00:00.000Z")  # another month: not counted
    record_spend(acme, 9.0, this_month, token_id=None, org_id=None)  # no organisation
    set_budget(acme, "3")
    gate = Gate(acme, clock=clock)
    gate.refresh()
    each = reservation(gate)

    def spend_all() -> int:
        admitted = 0
        while isinstance(hold := admit(gate), Hold):
            record_spend(acme, each / NANOS, utc_timestamp(time.time()))
            gate.settle_cost(hold, each / NANOS)
            gate.refresh()
            admitted += 1
        return admitted

    first = spend_all()
    assert first == (3 * NANOS - 2_500_000_000) // each
    status = json.loads(invoke(acme, "budgets", "list", "--json"))[0]
    assert 3 - each / NANOS < status["spent_usd"] <= 3
    assert status["left_usd"] < each / NANOS
    # A request that began before the leases and was recorded after them.
    record_spend(acme, 0.5, this_month)
    set_budget(acme, "4", "--replace")
    gate.refresh()
    assert spend_all() == (4 * NANOS - 3 * NANOS - first * each) // each
    status = json.loads(invoke(acme, "budgets", "list", "--json"))[0]
    assert 4 - each / NANOS < status["spent_usd"] <= 4


class Ticker:
    """A clock of seconds (time.time's or time.monotonic's kind), moved by the test."""

    def __init__(self, at: float = 1_000_000.0) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at


def test_a_silent_holders_unused_slice_is_reclaimed(acme: Path) -> None:
    """Worker A takes a slice and is killed (it never gives it back). Once A has been
    silent longer than the reclaim time, B gets the part A had not used, never what A had
    spent or reserved; and A, were it only stalled, may not spend what was reclaimed."""
    set_budget(acme, "1")
    ticks = Ticker()
    gates = {
        name: Gate(
            acme,
            store=SqliteLeaseStore(acme, reclaim_seconds=60, clock=ticks),
            reclaim_seconds=60,
            monotonic=ticks,
        )
        for name in "ab"
    }
    a, b = gates["a"], gates["b"]
    a.refresh()
    each = reservation(a)
    limit = 40 * each
    set_budget(acme, usd(limit), "--replace")
    for gate in (a, b, a, b):
        gate.refresh()
    a_hold = admit(a)
    assert isinstance(a_hold, Hold)
    a.refresh()  # A's last word: one request reserved, the rest of its slice free
    conn = sqlite3.connect(acme)
    a_granted, a_used = conn.execute(
        "select granted, used from control_leases where holder = ?", (a.holder,)
    ).fetchone()
    assert a_used == each and a_granted > 4 * each  # A sits on a share of the budget

    def spend(gate: Gate) -> int:
        admitted = 0
        while isinstance(hold := admit(gate), Hold):
            gate.settle_cost(hold, each / NANOS)
            gate.refresh()
            admitted += 1
        return admitted

    before = spend(b)
    assert before == (limit - a_granted) // each  # B alone: A's slice stays taken
    ticks.at += 21  # A is silent past its lease: it may no longer spend from its slice
    refused = admit(a)
    assert isinstance(refused, Refusal) and refused.code == "budget_not_ready"
    ticks.at += 40  # and past the reclaim time
    b.refresh()
    assert conn.execute(
        "select granted, used from control_leases where holder = ?", (a.holder,)
    ).fetchone() == (each, each)
    after = spend(b)
    assert before + after == 39  # all of it, but for what A reserved
    taken = conn.execute("select sum(granted) from control_leases").fetchone()[0]
    assert taken <= limit
    a.refresh()  # A wakes up: it cannot take back what was reclaimed
    assert isinstance(admit(a), Refusal)
    assert conn.execute("select sum(granted) from control_leases").fetchone()[0] <= limit


def test_without_max_tokens_the_models_output_limit_is_reserved(acme: Path) -> None:
    """No max_tokens: the model's documented output limit (pricing/output_limits.json),
    else monitor_default_max_output, or the library's context window if smaller."""
    set_budget(acme, "100")
    gate = Gate(acme, default_max_output=1000)
    gate.refresh()

    def reserved(provider: str, model: str) -> int:
        hold = admit(gate, prompt_bytes=0, max_output=None, provider=provider, model=model)
        assert isinstance(hold, Hold), hold
        gate.release(hold)
        return hold.cost_parts[0][1]

    # claude-opus-4-6: 128K output tokens (platform.claude.com), at its $25 per 1M.
    opus = gate._rates_for("anthropic", "claude-opus-4-6")
    assert opus is not None and opus[1] == 25 * NANOS_PER_RATE
    assert reserved("anthropic", "claude-opus-4-6-20260205") == 128_000 * opus[1]
    # gemini-2.5-pro: 65,535 (Google's documentation).
    pro = gate._rates_for("gemini", "gemini-2.5-pro")
    assert pro is not None
    assert reserved("gemini", "gemini-2.5-pro") == 65_535 * pro[1]
    # gpt-5 is not in the file: the default, not its 400,000-token context window (a
    # window that large would outgrow any tokens-per-minute limit and small budget).
    gpt5 = gate._rates_for("openai", "gpt-5")
    assert gpt5 is not None
    assert reserved("openai", "gpt-5") == 1000 * gpt5[1]
    # A default larger than the window: the window bounds it, no output can exceed it.
    wide = Gate(acme, default_max_output=10_000_000)
    wide.refresh()
    hold = admit(wide, prompt_bytes=0, max_output=None, provider="openai", model="gpt-5")
    assert isinstance(hold, Hold) and hold.cost_parts[0][1] == 400_000 * gpt5[1]
    # A request with max_tokens reserves that, whatever the model's limit.
    hold = admit(gate, prompt_bytes=0, max_output=10, provider="openai", model="gpt-5")
    assert isinstance(hold, Hold) and hold.cost_parts[0][1] == 10 * gpt5[1]


def test_the_shipped_output_limits_are_sourced_and_not_prices() -> None:
    limits = shipped_output_limits()
    assert limits[("anthropic", "claude-opus-4-6")] == 128_000
    document = json.loads((SHIPPED_PRICES / OUTPUT_LIMITS_FILE).read_text())
    assert all(e["source"].startswith("https://") and e["as_of"] for e in document["limits"])
    assert all(e.origin != OUTPUT_LIMITS_FILE for e in shipped_prices())


def test_spend_from_the_rollups_equals_the_sum_of_the_rows(acme: Path) -> None:
    """A budget's spend is read from the daily and hourly rollups plus the rows of the
    hour (or, by tag, the day) not whole in its range; it equals the rows' own sum, for
    every scope and for ranges whole and cut anywhere."""
    invoke(acme, "orgs", "create", "Other", "--email", "o@x.example")
    rng = random.Random(13)
    start = dt.datetime(2026, 5, 25, tzinfo=dt.UTC)
    rows = []
    for _ in range(3000):
        at = start + dt.timedelta(seconds=rng.randrange(40 * 86400))
        tags = {"team": rng.choice(["search", "ads"])}
        unpriced = rng.random() < 0.05
        if rng.random() < 0.3:
            tags["env"] = rng.choice(["prod", "dev"])
        rows.append(
            {
                **usage_record(
                    ts=utc_timestamp(at.timestamp() + rng.random()),
                    org_id=rng.choice([1, 1, 1, 2]),
                    token_id=rng.choice([1, 1, 2]),
                    user=rng.choice(["alice", "bob", None]),
                    tags=json.dumps(tags, sort_keys=True),
                ).model_dump(),
                # Prices as they come: many digits, some rows unpriced.
                "cost_usd": None if unpriced else rng.randrange(1, 10**7) * 7.3e-9,
                "priced": 0 if unpriced else 1,
            }
        )
    db = open_db(acme)
    for i in range(0, len(rows), 100):
        write_rows(db, rows[i : i + 100])  # in batches, as the recorder adds to the rollups
    conn = db.conn
    scopes = [
        ("org", ""),
        ("token", "1"),
        ("token", "2"),
        ("user", "alice"),
        ("tag", "team=search"),
        ("tag", "env=prod"),
    ]
    edges = [
        "2026-06-01T00:00:00.000Z",
        "2026-07-01T00:00:00.000Z",
        "2026-06-08T00:00:00.000Z",
        "2026-06-15T13:00:00.000Z",
        "2026-06-15T13:27:41.512Z",
        "2026-06-15T14:02:00.000Z",
        "2026-05-25T00:00:00.001Z",
        "2026-07-04T23:59:59.999Z",
    ]
    checked = 0
    for scope, value in scopes:
        for first in edges:
            for last in edges:
                if first >= last:
                    continue
                spend = SpendScope(1, scope, value, first, last)
                raw = raw_recorded_nanos(conn, spend)
                assert recorded_nanos(conn, spend) == raw, (spend, raw)
                count = raw_unpriced_requests(conn, spend)
                assert unpriced_requests(conn, spend) == count, (spend, count)
                checked += raw > 0 and count > 0
    assert checked > 100
    db.conn.close()


def test_date_range_budgets_of_one_scope_differ_by_their_dates(acme: Path) -> None:
    """A hard Q2 budget beside a hard Q1 one; a second Q1 one is refused in one line and
    nothing is stored; the index holds even against a writer that skips the check."""
    q1, q2 = "2026-01-01..2026-03-31", "2026-04-01..2026-06-30"
    invoke(acme, "budgets", "set", "--org", "Acme", "--period", q1, "--usd", "300")
    invoke(acme, "budgets", "set", "--org", "Acme", "--period", q2, "--usd", "400")
    again = run(acme, "budgets", "set", "--org", "Acme", "--period", q1, "--usd", "500")
    assert again.exit_code == 1
    assert again.output.strip() == (
        f"Error: a hard {q1} budget for this scope exists already (budget 1); change it "
        "with --replace or remove it first"
    )
    invoke(acme, "budgets", "set", "--org", "Acme", "--period", q1, "--usd", "350", "--replace")
    rows = json.loads(invoke(acme, "budgets", "list", "--json"))
    assert [(r["period"], r["limit_usd"]) for r in rows] == [(q1, 350.0), (q2, 400.0)]
    conn = sqlite3.connect(acme)
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute(
            "insert into budgets (org_id, scope, scope_value, period, starts_on, ends_on, "
            "amount_usd, hard, thresholds, created_at) "
            "values (1, 'org', '', 'range', '2026-04-01', '2026-06-30', '1', 1, '100', '')"
        )
    with pytest.raises(sqlite3.IntegrityError):  # calendar periods: NULL dates, one key
        for _ in range(2):
            conn.execute(
                "insert into budgets (org_id, scope, scope_value, period, amount_usd, hard, "
                "thresholds, created_at) values (1, 'org', '', 'month', '1', 1, '100', '')"
            )
