"""`llm-monitor backup` while the proxy writes, `prune` (rollups and totals unchanged, even
after a reprice) and `doctor`."""

from __future__ import annotations

import datetime as dt
import socket
import sqlite3
import threading
from pathlib import Path

import httpx
from click.testing import CliRunner
from sqlite_utils import Database

from llm_monitor.cli import cli
from llm_monitor.demo.setup import create_demo_db
from llm_monitor.money.sync import freshness
from llm_monitor.store.rollups import ROLLUPS
from tests.conftest import invoke, new_org
from tests.proxy import free_port, running_proxy, wait_for_rows
from tests.replay import ReplayServer, Reply, load_recording

CHAT = load_recording("openai/chat_json_text_gpt-4o.json")


def table(db_path: Path, name: str) -> list[tuple]:
    conn = sqlite3.connect(db_path)
    try:
        return sorted(conn.execute(f"select * from {name}").fetchall(), key=repr)
    finally:
        conn.close()


def test_backup_while_traffic_runs(tmp_path: Path, upstream: ReplayServer) -> None:
    db_path = tmp_path / "live.db"
    invoke(db_path, "init")
    token = new_org(db_path, "Acme")
    stop = threading.Event()
    sent = []

    with running_proxy(db_path, f"http://127.0.0.1:{upstream.port}") as proxy:

        def traffic() -> None:
            with httpx.Client(base_url=proxy.base_url) as client:
                while not stop.is_set():
                    upstream.reply(Reply.from_recording(CHAT))
                    response = client.post(
                        "/chat/completions",
                        json=CHAT["request"]["body"],
                        headers={"X-Monitor-Token": token},
                    )
                    sent.append(response.status_code)

        thread = threading.Thread(target=traffic)
        thread.start()
        try:
            wait_for_rows(db_path, "1", count=20)
            copies = []
            for i in range(3):
                target = tmp_path / f"copy-{i}.db"
                output = invoke(db_path, "backup", str(target))
                copies.append((target, output))
        finally:
            stop.set()
            thread.join(30)
        wait_for_rows(db_path, "1", count=len(sent))
    assert set(sent) == {200}
    for target, output in copies:
        conn = sqlite3.connect(target)
        try:
            assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
            rows = conn.execute("select count(*) from usage").fetchone()[0]
            # One transaction's view: the rollups hold exactly the rows the copy holds.
            daily = conn.execute("select sum(requests) from usage_daily").fetchone()[0]
            hourly = conn.execute("select sum(requests) from usage_hourly").fetchone()[0]
        finally:
            conn.close()
        assert rows >= 20 and daily == hourly == rows
        assert f"{target}: {rows} usage rows" in output
    assert not (tmp_path / "copy-0.db-wal").exists()
    result = CliRunner().invoke(cli, ["--db", str(db_path), "backup", str(copies[0][0])])
    assert result.exit_code == 1 and "exists" in result.output


def test_prune_keeps_rollups_and_totals(tmp_path: Path) -> None:
    db_path = tmp_path / "history.db"
    create_demo_db(str(db_path), 6)
    today = dt.datetime.now(dt.UTC).date()
    cutoff = (today - dt.timedelta(days=3)).isoformat()
    rollups_before = {r.table: table(db_path, r.table) for r in ROLLUPS}
    stats_before = invoke(db_path, "stats", "--period", "week", "--json")
    old = table(db_path, f"usage where ts < '{cutoff}'")
    kept = table(db_path, f"usage where ts >= '{cutoff}'")
    assert old and kept

    assert f"would delete {len(old)} usage rows" in invoke(
        db_path, "prune", "--before", cutoff, "--dry-run"
    )
    assert len(table(db_path, "usage")) == len(old) + len(kept)
    assert f"deleted {len(old)} usage rows from before {cutoff}" in invoke(
        db_path, "prune", "--before", cutoff
    )
    assert table(db_path, "usage") == kept
    assert {r.table: table(db_path, r.table) for r in ROLLUPS} == rollups_before
    # A reprice from before the pruned day rebuilds only what it still has rows for.
    invoke(db_path, "pricing", "reprice", "--since", (today - dt.timedelta(days=6)).isoformat())
    assert {r.table: table(db_path, r.table) for r in ROLLUPS} == rollups_before
    # stats reads raw rows: only the week's requests that are still there.
    assert stats_before != invoke(db_path, "stats", "--period", "week", "--json")

    future = (today + dt.timedelta(days=2)).isoformat()
    result = CliRunner().invoke(cli, ["--db", str(db_path), "prune", "--before", future])
    assert result.exit_code == 2 and "in the future" in result.output
    result = CliRunner().invoke(cli, ["--db", str(db_path), "prune", "--before", "last week"])
    assert result.exit_code == 2 and "is not a day as YYYY-MM-DD" in result.output


def test_doctor(tmp_path: Path) -> None:
    db_path = tmp_path / "d.db"
    runner = CliRunner()
    result = runner.invoke(cli, ["--db", str(db_path), "doctor", "--no-ports"])
    assert result.exit_code == 1
    assert "PROBLEM  no database at" in result.output and "llm-monitor init" in result.output
    invoke(db_path, "init")
    result = runner.invoke(cli, ["--db", str(db_path), "doctor", "--no-ports"])
    assert result.exit_code == 1
    assert "PROBLEM  no monitor token" in result.output
    assert "ok       database writable" in result.output
    new_org(db_path, "Acme")
    result = runner.invoke(cli, ["--db", str(db_path), "doctor", "--no-ports"])
    assert result.exit_code == 0, result.output
    assert "ok       1 monitor tokens" in result.output
    assert "ok       prices current with the installed genai-prices 0.2.3" in result.output
    Path(f"{db_path}.spool.jsonl").write_text("{}\n")
    result = runner.invoke(cli, ["--db", str(db_path), "doctor", "--no-ports"])
    assert result.exit_code == 1 and "import-spool" in result.output


def test_doctor_finds_prices_behind_the_library_and_a_stale_library(tmp_path: Path) -> None:
    db_path = tmp_path / "d.db"
    invoke(db_path, "init")
    new_org(db_path, "Acme")
    with sqlite3.connect(db_path) as conn:  # as if gpt-4o came with a later release
        conn.execute("delete from prices where model = 'gpt-4o' and origin = 'library'")
    result = CliRunner().invoke(cli, ["--db", str(db_path), "doctor", "--no-ports"])
    assert result.exit_code == 1
    assert "PROBLEM  the installed genai-prices 0.2.3 has" in result.output
    assert "fix: review and apply them: `llm-monitor pricing sync`" in result.output
    invoke(db_path, "pricing", "sync", "--yes")
    result = CliRunner().invoke(cli, ["--db", str(db_path), "doctor", "--no-ports"])
    assert result.exit_code == 0, result.output
    # The pinned release knows of changes into 2027; half a year after its newest, stale.
    found = freshness(Database(db_path))
    assert not found.stale(dt.date(2026, 12, 2))
    assert found.stale(found.newest_change + dt.timedelta(days=181))


def test_doctor_checks_the_ports_up_will_take(tmp_path: Path) -> None:
    db_path = tmp_path / "d.db"
    invoke(db_path, "init")
    new_org(db_path, "Acme")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        args = ["--db", str(db_path), "doctor", "--no-defaults", "--dashboard-port", str(port)]
        result = CliRunner().invoke(
            cli, [*args, "--listen", f"groq=https://api.groq.com@{free_port()}"]
        )
        assert result.exit_code == 1
        assert f"PROBLEM  port {port} (dashboard) on 127.0.0.1" in result.output
        metrics = ["--dashboard-port", str(free_port()), "--metrics-port", str(port)]
        result = CliRunner().invoke(cli, [*args[:4], *metrics])
        assert f"PROBLEM  port {port} (metrics) on 127.0.0.1" in result.output
