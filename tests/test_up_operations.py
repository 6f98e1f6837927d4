"""`llm-monitor up` for operators: metrics (one process and --workers), busy ports refused
before anything starts, each address printed once; `--db` after the subcommand."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from llm_monitor.cli import cli
from tests.proxy import free_port, wait_for_port, wait_for_rows
from tests.replay import ReplayServer, Reply, load_recording
from tests.test_production import metric
from tests.test_up import HAPROXY, LLM_MONITOR, start_up

CHAT = load_recording("openai/chat_json_text_gpt-4o.json")


def send(port: int, token: str, count: int, upstream: ReplayServer) -> None:
    for _ in range(count):  # a new connection each time: HAProxy spreads them
        upstream.reply(Reply.from_recording(CHAT))
        response = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json=CHAT["request"]["body"],
            headers={"X-Monitor-Token": token},
        )
        assert response.status_code == 200


def scrape_until(port: int, process: subprocess.Popen, log: Path, want: float) -> str:
    wait_for_port(port, process, log)
    deadline = time.monotonic() + 15
    while True:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        if metric(text, "llm_monitor_requests_total") >= want or time.monotonic() > deadline:
            return text
        time.sleep(0.2)


def test_up_serves_metrics_and_prints_each_address_once(
    tmp_path: Path, upstream: ReplayServer
) -> None:
    metrics_port = free_port()
    up = start_up(tmp_path, upstream, "--metrics-port", str(metrics_port))
    try:
        send(up.port, up.token, 3, upstream)
        text = scrape_until(metrics_port, up.process, up.log, 3)
        assert metric(text, "llm_monitor_requests_total", outcome="ok") == 3
        wait_for_port(up.dashboard_port, up.process, up.log)
    finally:
        assert up.stop() == 0
    log = up.log.read_text()
    for address in (
        f"http://127.0.0.1:{up.port} ",
        f"http://127.0.0.1:{up.dashboard_port}/",
        f"http://127.0.0.1:{metrics_port}/metrics",
    ):
        assert log.count(address) == 1, log


@pytest.mark.skipif(HAPROXY is None, reason="HAProxy is not installed (apt-get install haproxy)")
def test_metrics_of_two_workers_are_added_up(tmp_path: Path, upstream: ReplayServer) -> None:
    metrics_port = free_port()
    up = start_up(
        tmp_path,
        upstream,
        "--workers",
        "2",
        "--metrics-port",
        str(metrics_port),
        "--",
        "--set",
        "monitor_flush_ms=20",
        workers=2,
    )
    try:
        send(up.port, up.token, 20, upstream)
        bad = httpx.get(f"http://127.0.0.1:{up.port}/v1/models")
        assert bad.status_code == 401
        wait_for_rows(up.db_path, "1", count=20)
        text = scrape_until(metrics_port, up.process, up.log, 20)
    finally:
        assert up.stop() == 0
    labels = {"provider": "openai", "model_family": "gpt-4o", "outcome": "ok"}
    assert metric(text, "llm_monitor_requests_total", **labels) == 20
    assert metric(text, "llm_monitor_tokens_total", kind="input") == 16 * 20
    assert metric(text, "llm_monitor_rejected_requests_total", reason="invalid_monitor_token") == 1


def test_up_refuses_a_busy_port_before_starting_anything(tmp_path: Path) -> None:
    db_path = tmp_path / "x.db"
    CliRunner().invoke(cli, ["--db", str(db_path), "init"], catch_exceptions=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        result = subprocess.run(
            [
                str(LLM_MONITOR),
                "--db",
                str(db_path),
                "up",
                "--no-defaults",
                "--listen",
                f"openai=http://127.0.0.1:9@{free_port()}",
                "--dashboard-port",
                str(busy),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1, result
    assert result.stderr.strip().splitlines() == [
        f"Error: cannot start: port {busy} (dashboard) on 127.0.0.1: Address already in use"
    ]


def test_db_is_accepted_after_the_subcommand(tmp_path: Path) -> None:
    db_path = tmp_path / "after.db"
    runner = CliRunner()
    result = runner.invoke(cli, ["init", "--db", str(db_path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert db_path.exists()
    result = runner.invoke(cli, ["stats", "--db", str(db_path)], catch_exceptions=False)
    assert result.exit_code == 0 and "no requests in this period" in result.output
    result = runner.invoke(
        cli,
        ["orgs", "create", "Acme", "--email", "ops@x.example", "--db", str(db_path)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    # The later --db wins; before the subcommand still works.
    result = runner.invoke(
        cli, ["--db", str(tmp_path / "none.db"), "orgs", "list", "--db", str(db_path)]
    )
    assert result.exit_code == 0 and "Acme" in result.output


def test_a_missing_directory_is_named(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--db", str(tmp_path / "no" / "such" / "x.db"), "init"])
    assert result.exit_code == 1
    assert (
        result.output.strip() == f"Error: no directory {tmp_path / 'no' / 'such'} for the database"
    )
