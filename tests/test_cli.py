"""The `llm-monitor` command line, run in-process against real database files."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from llm_monitor.accounts.passwords import verify_password
from llm_monitor.accounts.tokens import hash_token
from llm_monitor.cli import cli
from llm_monitor.money.costs import load_price_book, price_row
from llm_monitor.money.library import PROVIDERS, library_prices
from llm_monitor.store.database import open_db
from llm_monitor.store.recorder import write_rows
from llm_monitor.usage import utc_timestamp
from tests.conftest import invoke, invoke_with_password, new_org, usage_record


def fails(db_path: Path, *args: str) -> str:
    """Run a command that must fail cleanly: non-zero exit, one-line error, no traceback."""
    result = CliRunner().invoke(cli, ["--db", str(db_path), *args])
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result.output.strip().splitlines()[-1]


def query(db_path: Path, sql: str, params: tuple = ()) -> list[tuple]:
    with sqlite3.connect(db_path) as conn:
        return conn.execute(sql, params).fetchall()


def test_init_creates_schema_and_loads_default_prices(tmp_path: Path) -> None:
    db_path = tmp_path / "new.db"
    output = invoke(db_path, "init")
    assert f"{len(library_prices())} prices added from genai-prices 0.2.3" in output
    assert "1 local overrides loaded" in output
    prices = json.loads(invoke(db_path, "pricing", "list", "--json"))
    gpt_4o = [p for p in prices if p["model"] == "gpt-4o" and p["provider"] == "openai"]
    standard = [p for p in gpt_4o if not p["variant"]]
    assert [(p["input"], p["output"], p["source"]) for p in standard] == [
        ("2.5", "10", "genai-prices 0.2.3")
    ]
    assert all(p["as_of"] and p["source"] for p in prices)
    # Every provider we name has its prices, Groq's included, under our names.
    assert {p["provider"] for p in prices} == set(PROVIDERS)
    assert "0 prices added" in invoke(db_path, "init")  # again: idempotent
    assert len(json.loads(invoke(db_path, "pricing", "list", "--json"))) == len(prices)


def test_pricing_list_shows_the_price_in_force_with_its_source(fresh_db: Path) -> None:
    groq = json.loads(invoke(fresh_db, "pricing", "list", "--provider", "groq", "--json"))
    llama = [p for p in groq if p["model"] == "llama-3.3-70b-versatile"]
    assert [(p["input"], p["output"], p["origin"]) for p in llama] == [("0.59", "0.79", "library")]
    # o3's override ended on 2025-06-10: today the library's price is in force.
    o3 = [
        p
        for p in json.loads(invoke(fresh_db, "pricing", "list", "--json"))
        if p["model"] == "o3" and not p["variant"]
    ]
    assert [(p["input"], p["cached_input"], p["origin"]) for p in o3] == [("2", "0.5", "library")]
    # A local price wins over the library's from its first day on.
    invoke(fresh_db, "pricing", "set", "o3", "--input", "1", "--output", "4")
    o3 = [
        p for p in json.loads(invoke(fresh_db, "pricing", "list", "--json")) if p["model"] == "o3"
    ]
    assert [(p["input"], p["origin"], p["source"]) for p in o3] == [("1", "local", "set by hand")]
    table = invoke(fresh_db, "pricing", "list", "--provider", "openai")
    assert "local: set by hand" in table and "genai-prices 0.2.3" in table


def test_db_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_MONITOR_DB", str(tmp_path / "env.db"))
    assert CliRunner().invoke(cli, ["init"]).exit_code == 0
    assert (tmp_path / "env.db").exists()


def test_commands_need_an_initialised_database(tmp_path: Path) -> None:
    assert "llm-monitor init" in fails(tmp_path / "missing.db", "orgs", "list")


def test_orgs_and_tokens(fresh_db: Path) -> None:
    token = new_org(fresh_db, "Acme")
    assert token.startswith("mon_") and len(token) >= 4 + 32
    assert query(
        fresh_db, "select count(*) from monitor_tokens where token_hash = ?", (hash_token(token),)
    ) == [(1,)]
    second = json.loads(
        invoke(fresh_db, "tokens", "create", "--org", "Acme", "--name", "batch", "--json")
    )
    assert second["token"] != token

    listed = json.loads(invoke(fresh_db, "tokens", "list", "--org", "Acme", "--json"))
    assert [(t["label"], t["org"], t["revoked_at"]) for t in listed] == [
        ("default", "Acme", None),
        ("batch", "Acme", None),
    ]
    assert listed[0]["prefix"] == token[:10]
    assert all(token not in json.dumps(t) and "hash" not in t for t in listed)

    assert "revoked token" in invoke(fresh_db, "tokens", "revoke", token)  # by the token
    assert "revoked token" in invoke(fresh_db, "tokens", "revoke", str(second["token_id"]))
    assert "already revoked" in invoke(fresh_db, "tokens", "revoke", str(second["token_id"]))
    listed = json.loads(invoke(fresh_db, "tokens", "list", "--json"))
    assert all(t["revoked_at"] for t in listed)

    orgs = json.loads(invoke(fresh_db, "orgs", "list", "--json"))
    assert [(o["name"], o["email"], o["live_tokens"]) for o in orgs] == [
        ("Acme", "ops@x.example", 0)
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["orgs", "create", "Acme", "--email", "a@b.example"], "already exists"),
        (["orgs", "create", "Other", "--email", "not-an-email"], "not an email address"),
        (["orgs", "create", "Other"], "Missing option '--email'"),
        (["tokens", "create", "--org", "Nope"], "no organisation named 'Nope'"),
        (["tokens", "list", "--org", "Nope"], "no organisation named 'Nope'"),
        (["tokens", "revoke", "999"], "no such token"),
        (["tokens", "revoke", "mon_unknown"], "no such token"),
        (["tokens", "revoke", "drop table"], "give a token id"),
        (["pricing", "set", "m", "--input", "x", "--output", "1"], "is not a number"),
        (["pricing", "set", "m", "--input", "-1", "--output", "1"], "non-negative"),
        (["pricing", "set", "m", "--input", "1"], "Missing option '--output'"),
        (
            ["pricing", "set", "m", "--input", "1", "--output", "1", "--effective-from", "soon"],
            "does not match the format",
        ),
        (["pricing", "reprice"], "Missing option '--since'"),
        (["stats", "--period", "year"], "'year' is not one of"),
        (["stats", "--org", "Nope"], "no organisation named 'Nope'"),
        (["nosuchcommand"], "No such command"),
    ],
)
def test_wrong_arguments_give_one_line_errors(
    fresh_db: Path, args: list[str], message: str
) -> None:
    new_org(fresh_db, "Acme")
    assert message in fails(fresh_db, *args)


def test_pricing_set_export_import_round_trip(fresh_db: Path, tmp_path: Path) -> None:
    invoke(
        fresh_db,
        "pricing",
        "set",
        "my-model",
        "--provider",
        "groq",
        "--input",
        "0.59",
        "--output",
        "0.79",
        "--cached-input",
        "0.295",
        "--effective-from",
        "2026-01-01",
    )
    exported = invoke(fresh_db, "pricing", "export")
    entry = next(e for e in json.loads(exported)["prices"] if e["model"] == "my-model")
    assert entry == {
        "provider": "groq",
        "model": "my-model",
        "input": "0.59",
        "output": "0.79",
        "cached_input": "0.295",
        "effective_from": "2026-01-01",
        "source": "set by hand",
        "as_of": entry["as_of"],
    }

    other = tmp_path / "other.db"
    invoke(other, "init")
    (tmp_path / "prices.json").write_text(exported)
    assert "imported" in invoke(other, "pricing", "import", str(tmp_path / "prices.json"))
    assert invoke(other, "pricing", "export") == exported


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"entries": []}', 'expected an object with a "prices" list'),
        (
            '{"prices": [{"provider": "openai", "model": "a", "input": 1, "output": 2, '
            '"source": "s", "as_of": "2026-01-01"}, {"provider": "openai", "model": "gpt-x", '
            '"input": "cheap", "output": 2, "source": "s", "as_of": "2026-01-01"}]}',
            "entry 1 (gpt-x): field 'input'",
        ),
        (
            '{"prices": [{"provider": "openai", "model": "gpt-x", "input": 1, "output": -2, '
            '"source": "s", "as_of": "2026-01-01"}]}',
            "entry 0 (gpt-x): field 'output'",
        ),
        (
            '{"prices": [{"provider": "openai", "model": "gpt-x", "input": 1, "output": 2, '
            '"as_of": "2026-01-01"}]}',
            "entry 0 (gpt-x): field 'source': Field required",
        ),
        (
            '{"prices": [{"provider": "openai", "model": "gpt-x", "input": 1, "output": 2, '
            '"source": "s", "as_of": "2026-01-01", "inptu": 3}]}',
            "field 'inptu'",
        ),
    ],
)
def test_bad_price_file_names_entry_and_field(
    fresh_db: Path, tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    before = invoke(fresh_db, "pricing", "export")
    assert message in fails(fresh_db, "pricing", "import", str(path))
    assert invoke(fresh_db, "pricing", "export") == before  # nothing half-imported


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        (b"\xff\xfe not utf-8", ["pricing", "import"], "not a UTF-8 text file"),
        (b"[" * 100_000, ["pricing", "import"], "nested too deeply"),
        (
            b'{"prices": [{"provider": "o", "model": "m", "input": 1, "output": 1, "source": "s",'
            b' "as_of": "2026-01-01", "above_input_tokens": 100000000000000000000000}]}',
            ["pricing", "import"],
            "field 'above_input_tokens'",
        ),
        (b"\xff\xfe", ["import-spool"], "not UTF-8"),
        (
            b'{"ts": "yesterday", "org_id": 1, "token_id": 1, "provider": "openai", '
            b'"method": "POST", "path": "/", "outcome": "ok"}\n',
            ["import-spool"],
            "not a usage row",
        ),
    ],
)
def test_bad_files_give_one_line_errors(
    fresh_db: Path, tmp_path: Path, content: bytes, args: list[str], message: str
) -> None:
    path = tmp_path / "input"
    path.write_bytes(content)
    assert message in fails(fresh_db, *args, str(path))


def test_absurd_token_id(fresh_db: Path) -> None:
    assert "Error" in fails(fresh_db, "tokens", "revoke", "9" * 40)


def insert_usage(db_path: Path, **values: object) -> None:
    row = {
        "ts": "2026-03-02T10:00:00.000Z",
        "provider": "openai",
        "method": "POST",
        "path": "/v1/chat/completions",
        "outcome": "ok",
        "status": 200,
        **values,
    }
    with sqlite3.connect(db_path) as conn:
        conn.execute(
            f"insert into usage ({', '.join(row)}) values ({', '.join('?' * len(row))})",
            list(row.values()),
        )


def test_reprice_and_unpriced(fresh_db: Path) -> None:
    insert_usage(
        fresh_db,
        model="acme-llm",
        input_tokens=1000,
        output_tokens=500,
        priced=0,
        unpriced_reason="no_price",
    )
    # A hung-up client's request has a price; its usage was never seen: not "unpriced".
    insert_usage(fresh_db, model="gpt-4o", outcome="client_disconnected", priced=0, status=None)
    insert_usage(
        fresh_db,
        model="gpt-4o",
        input_tokens=1000,
        cached_input_tokens=400,
        output_tokens=100,
        priced=1,
        cost_usd=0.003,
    )
    unpriced = json.loads(invoke(fresh_db, "pricing", "unpriced", "--json"))
    assert [(u["model"], u["requests"]) for u in unpriced] == [("acme-llm", 1)]
    # What a reprice would do, without doing it: rows and totals before and after.
    invoke(
        fresh_db, "pricing", "set", "acme-llm", "--input", "3", "--output", "15",
        "--effective-from", "2026-03-01", "--source", "acme's price list",
    )  # fmt: skip
    dry = json.loads(
        invoke(fresh_db, "pricing", "reprice", "--since", "2026-03-01", "--dry-run", "--json")
    )
    acme = next(m for m in dry if m["model"] == "acme-llm")
    assert (acme["requests"], acme["changed"], acme["cost_before"], acme["cost_after"]) == (
        1,
        1,
        0.0,
        0.0105,
    )
    assert (acme["unpriced_before"], acme["unpriced_after"]) == (1, 0)
    text = invoke(fresh_db, "pricing", "reprice", "--since", "2026-03-01", "--dry-run")
    assert "nothing written" in text and "$0.003000 -> $0.013500" in text
    assert query(fresh_db, "select cost_usd from usage where model = 'acme-llm'") == [(None,)]

    # A price from March on changes nothing written until a reprice is asked for.
    # Three rows change: acme-llm gets a cost; gpt-4o's gets its basis; the hung-up
    # request keeps no cost but gets its reason.
    assert "3 changed" in invoke(fresh_db, "pricing", "reprice", "--since", "2026-03-01")
    # 1000 x 3 + 500 x 15 = 10500 per 1M
    assert query(fresh_db, "select cost_usd, priced from usage where model = 'acme-llm'") == [
        (0.0105, 1)
    ]
    # gpt-4o: 600 x 2.50 + 400 x 1.25 + 100 x 10 = 3000 per 1M: recomputed, the same
    assert query(fresh_db, "select cost_usd from usage where model = 'gpt-4o' and priced = 1") == [
        (0.003,)
    ]
    assert "every model seen so far has a price" in invoke(fresh_db, "pricing", "unpriced")
    reasons = query(fresh_db, "select model, cost_basis, unpriced_reason from usage order by id")
    assert reasons == [
        ("acme-llm", "local:openai/acme-llm@2026-03-01", None),
        ("gpt-4o", None, "usage_unseen"),
        ("gpt-4o", "genai-prices 0.2.3:openai/gpt-4o@2000-01-01", None),
    ]

    # A price effective later than the rows does not apply to them.
    invoke(
        fresh_db,
        "pricing",
        "set",
        "acme-llm",
        "--input",
        "30",
        "--output",
        "150",
        "--effective-from",
        "2026-04-01",
    )
    assert "0 changed" in invoke(fresh_db, "pricing", "reprice", "--since", "2026-01-01")


def test_stats(fresh_db: Path) -> None:
    new_org(fresh_db, "Acme")
    now = utc_timestamp(time.time())
    insert_usage(
        fresh_db,
        ts=now,
        org_id=1,
        model="gpt-4o",
        input_tokens=100,
        output_tokens=10,
        cost_usd=0.00035,
        priced=1,
        latency_ms=100.0,
    )
    insert_usage(
        fresh_db,
        ts=now,
        org_id=1,
        model="gpt-4o",
        input_tokens=300,
        output_tokens=30,
        cost_usd=0.00105,
        priced=1,
        latency_ms=300.0,
    )
    insert_usage(
        fresh_db,
        ts=now,
        org_id=1,
        model="mystery",
        input_tokens=5,
        priced=0,
        outcome="provider_error",
        status=400,
    )
    insert_usage(
        fresh_db,
        ts="2020-01-01T00:00:00.000Z",
        org_id=1,
        model="gpt-4o",
        input_tokens=10**6,
        cost_usd=100.0,
        priced=1,
    )  # outside the period

    rows = json.loads(invoke(fresh_db, "stats", "--period", "week", "--org", "Acme", "--json"))
    by_model = {r["model"]: r for r in rows}
    assert by_model["gpt-4o"]["requests"] == 2
    assert by_model["gpt-4o"]["input_tokens"] == 400
    assert by_model["gpt-4o"]["cost_usd"] == pytest.approx(0.0014)
    assert by_model["gpt-4o"]["avg_latency_ms"] == 200.0
    assert (by_model["mystery"]["errors"], by_model["mystery"]["unpriced"]) == (1, 1)
    text = invoke(fresh_db, "stats", "--period", "week")
    assert "3 requests, $0.001400 (1 requests without a price not included)" in text


def test_passwords_are_checked_and_stored_only_as_scrypt_hashes(fresh_db: Path) -> None:
    def run(*args: str, password: str) -> Any:
        return invoke_with_password(fresh_db, password, *args)

    short = run("orgs", "create", "Acme", "--email", "a@x.example", "--password", password="short")
    assert short.exit_code == 2 and "at least 8 characters" in short.output
    assert "Traceback" not in short.output
    created = run(
        "orgs", "create", "Acme", "--email", "a@x.example", "--password", password="long-secret-1"
    )
    assert created.exit_code == 0, created.output
    new_org(fresh_db, "Globex")
    # Acme's login, in any case: refused, with or without a password.
    for extra in ([], ["--password"]):
        taken = run(
            "orgs", "create", "Initech", "--email", "A@X.example", *extra, password="long-secret-2"
        )
        assert taken.exit_code == 1 and "cannot use this email" in taken.output
    changed = run("orgs", "set-password", "Acme", "--admin", password="long-secret-3")
    assert changed.exit_code == 0 and "log in to the dashboard as a@x.example" in changed.output
    stored = (
        sqlite3.connect(fresh_db)
        .execute(
            "select p.password_hash, o.is_admin from orgs o join members m on m.org_id = o.id "
            "join people p on p.id = m.person_id where o.name = 'Acme' and m.role = 'owner'"
        )
        .fetchone()
    )
    assert stored[0].startswith("scrypt$16384$8$1$") and "long-secret" not in stored[0]
    assert stored[1] == 1
    assert verify_password("long-secret-3", stored[0])
    listed = {o["name"]: o for o in json.loads(invoke(fresh_db, "orgs", "list", "--json"))}
    assert (listed["Acme"]["members"], listed["Acme"]["admin"]) == (1, 1)
    assert (listed["Globex"]["members"], listed["Globex"]["admin"]) == (0, 0)
    missing = run("orgs", "set-password", "Nobody", password="long-secret-4")
    assert missing.exit_code == 1 and "no organisation named 'Nobody'" in missing.output


def test_dashboard_tokens_are_listed_without_the_token_and_revoked(fresh_db: Path) -> None:
    new_org(fresh_db, "Acme")
    created = json.loads(
        invoke(
            fresh_db, "dashboard-token", "create", "--org", "Acme", "--name", "grafana", "--json"
        )
    )
    token = created["token"]
    listed = json.loads(invoke(fresh_db, "dashboard-token", "list", "--json"))
    assert [(t["label"], t["prefix"], t["revoked_at"]) for t in listed] == [
        ("grafana", token[:11], None)
    ]
    assert token not in invoke(fresh_db, "dashboard-token", "list")
    stored = sqlite3.connect(fresh_db).execute("select token_hash from dashboard_tokens").fetchone()
    assert stored[0] == hashlib.sha256(token.encode()).hexdigest()
    # Monitor and dashboard tokens are apart: neither command revokes the other's.
    wrong = CliRunner().invoke(cli, ["--db", str(fresh_db), "tokens", "revoke", token])
    assert wrong.exit_code == 2 and "a full mon_ token" in wrong.output
    assert "revoked token 1" in invoke(fresh_db, "dashboard-token", "revoke", token)
    assert "already revoked" in invoke(fresh_db, "dashboard-token", "revoke", "1")


def test_a_password_piped_in_prints_only_the_result(fresh_db: Path) -> None:
    """As a script runs it: the real command, the password on standard input (a pipe, not a
    terminal), once or twice; nothing on the terminal but the one line that says it worked."""
    new_org(fresh_db, "Acme")
    command = [sys.executable, "-m", "llm_monitor", "--db", str(fresh_db), "orgs", "set-password"]
    for typed in ("long-secret-1\n", "long-secret-2\nlong-secret-2\n"):
        result = subprocess.run([*command, "Acme"], input=typed, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert (
            result.stdout == "password set for 'Acme': log in to the dashboard as ops@x.example\n"
        )
        assert result.stderr == ""
    stored = sqlite3.connect(fresh_db).execute("select password_hash from people").fetchone()[0]
    assert verify_password("long-secret-2", stored)
    differ = subprocess.run(
        [*command, "Acme"], input="long-secret-3\nlong-secret-4\n", capture_output=True, text=True
    )
    assert differ.returncode == 2 and "the two passwords differ" in differ.stderr
    assert "Traceback" not in differ.stderr


def test_explain_shows_each_count_at_its_rate_or_why_there_is_no_cost(fresh_db: Path) -> None:
    book = load_price_book(open_db(fresh_db))
    base = {"ts": "2026-12-01T10:15:02.120Z", "org_id": None, "token_id": None}
    records = [
        usage_record(
            **base,
            provider="anthropic",
            path="/v1/messages",
            model="claude-sonnet-4-5",
            input_tokens=1300,
            cached_input_tokens=200,
            cache_write_tokens=100,
            output_tokens=100,
            web_search_requests=3,
        ),
        usage_record(
            **base, model="gpt-4o", input_tokens=1000, output_tokens=10, input_audio_tokens=300
        ),
        usage_record(**base, model="gpt-4o", outcome="client_disconnected", status=None),
    ]
    db = open_db(fresh_db)
    write_rows(db, [price_row(r, book) for r in records])
    searched = invoke(fresh_db, "explain", "1")
    # 1000 x 3 + 200 x 0.3 + 100 x 3.75 + 100 x 15 per 1M, + 3 x 10 per 1,000
    for line in (
        "price: genai-prices 0.2.3:anthropic/claude-sonnet-4-5@2000-01-01",
        "1,000 x $3 / 1M = $0.003",
        "200 x $0.3 / 1M = $0.00006",
        "100 x $3.75 / 1M = $0.000375",
        "100 x $15 / 1M = $0.0015",
        "3 x $10 / 1,000 = $0.03",
        "$0.034935",
        "stored cost_usd: 0.034935 (as computed above)",
    ):
        assert line in searched
    audio = invoke(fresh_db, "explain", "2")
    assert "no cost: missing_rate:input_audio" in audio
    assert "the price in force: genai-prices 0.2.3:openai/gpt-4o@2000-01-01" in audio
    assert "usage_unseen" in invoke(fresh_db, "explain", "3")
    assert "no usage row with id 9" in fails(fresh_db, "explain", "9")


def test_pricing_sync_adds_new_and_changed_prices_and_keeps_history(fresh_db: Path) -> None:
    assert "the table has every price" in invoke(fresh_db, "pricing", "sync")
    # As if the table had been filled by an older library: gpt-4o cost $2 (now $2.50, +25%),
    # gpt-4.1's output $8.1 (now $8, -1.2%), and grok-4.3 did not exist.
    with sqlite3.connect(fresh_db) as conn:
        library = "origin = 'library' and variant = '' and above_input_tokens = 0"
        conn.execute(
            f"update prices set input = '2' where provider = 'openai' and model = 'gpt-4o' "
            f"and {library}"
        )
        conn.execute(
            f"update prices set output = '8.1' where provider = 'openai' and model = 'gpt-4.1' "
            f"and {library}"
        )
        conn.execute("delete from prices where provider = 'xai' and model = 'grok-4.3'")
    before = query(fresh_db, "select count(*) from prices")[0][0]
    declined = CliRunner().invoke(cli, ["--db", str(fresh_db), "pricing", "sync"], input="n\n")
    assert declined.exit_code == 0 and "nothing changed" in declined.output
    assert query(fresh_db, "select count(*) from prices")[0][0] == before
    shown = declined.output
    assert "1 new models:\n  xai/grok-4.3\n" in shown
    assert " !openai/gpt-4o: input 2 -> 2.5 (+25.0%)" in shown
    assert "  openai/gpt-4.1: output 8.1 -> 8 (-1.2%)" in shown
    applied = invoke(fresh_db, "pricing", "sync", "--yes")
    assert "added" in applied
    # History stays: the old gpt-4o row is there, the new one applies from today.
    today = dt.datetime.now(dt.UTC).date().isoformat()
    gpt_4o = query(
        fresh_db,
        "select input, effective_from from prices where model = 'gpt-4o' and provider = 'openai' "
        "and origin = 'library' and variant = '' order by effective_from",
    )
    assert gpt_4o == [("2", "2000-01-01"), ("2.5", today)]
    assert query(fresh_db, "select count(*) from prices where model = 'grok-4.3'")[0][0] > 0
    assert "the table has every price" in invoke(fresh_db, "pricing", "sync")


def test_a_database_from_before_the_price_library_is_upgraded(tmp_path: Path) -> None:
    from sqlite_utils import Database

    from llm_monitor.store.database import migrations

    db_path = tmp_path / "old.db"
    db = Database(sqlite3.connect(db_path))
    migrations.apply(db, stop_before="m007_price_library_and_cost_basis")
    db["prices"].insert_all(
        [
            {
                "provider": "openai",
                "model": "gpt-4o",
                "effective_from": "2000-01-01",
                "input": "2.50",
                "cached_input": "1.25",
                "output": "10.00",
                "above_input_tokens": 0,
                "source": "https://openai.com/api/pricing/ (figures as in pydantic/genai-prices)",
                "as_of": "2025-11-13",
            },
            {
                "provider": "groq",
                "model": "llama-3.3-70b-versatile",
                "effective_from": "2026-01-01",
                "input": "0.5",
                "output": "0.7",
                "above_input_tokens": 0,
                "source": "set by hand",
                "as_of": "2026-01-01",
            },
        ]
    )
    base = {"ts": "2026-03-01T00:00:00.000Z", "provider": "openai", "method": "POST"}
    db["usage"].insert_all(
        [
            {
                **base,
                "path": "/v1/x",
                "outcome": "ok",
                "model": "m",
                "input_tokens": 5,
                "priced": 0,
            },
            {**base, "path": "/v1/x", "outcome": "client_disconnected", "model": "m", "priced": 0},
        ]
    )
    db.conn.commit()
    db.conn.close()
    invoke(db_path, "init")
    # The former shipped price is the library's (it was a copy of the published one); a
    # price set by hand stays local, and wins.
    origins = query(
        db_path,
        "select model, origin from prices where source not like 'genai-prices%' order by model",
    )
    assert origins == [
        ("gpt-4o", "library"),
        ("llama-3.3-70b-versatile", "local"),
        ("o3", "local"),  # the shipped override, loaded by init
    ]
    assert query(db_path, "select unpriced_reason from usage order by id") == [
        ("no_price",),
        ("usage_unseen",),
    ]
