"""Hard budgets and rate limits through a real `llm-monitor up --workers 2`: spend never
exceeds the budget under concurrency, refused requests never reach the provider, and a
rate limit holds across the workers."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import queue
import shutil
import signal
import sqlite3
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from llm_monitor.controls.budgets import NANOS
from llm_monitor.controls.gate import NANOS_PER_RATE
from llm_monitor.money.costs import load_price_book
from llm_monitor.store.database import open_db
from tests.conftest import API_KEY, invoke, set_budget
from tests.replay import ReplayServer, Reply, load_recording
from tests.test_up import Up, launch_up, start_up

HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(HAPROXY is None, reason="HAProxy is not installed"),
]

JSON_RECORDING = "openai/chat_json_text_gpt-4o.json"
STREAM_RECORDING = "openai/chat_stream_text_include_usage_gpt-4o.json"
MAX_TOKENS = 20


def request_body(recording: dict) -> bytes:
    return json.dumps({**recording["request"]["body"], "max_tokens": MAX_TOKENS}).encode()


def worst_case_nanos(db_path: Path, body: bytes) -> int:
    """What the proxy reserves for `body`: its bytes at gpt-4o's input rate, max_tokens at
    its output rate (the price book the proxy uses)."""
    db = open_db(db_path)
    quote = load_price_book(db).quote("openai", "gpt-4o", dt.datetime.now(dt.UTC))
    rates = quote.rates
    input_rate = max(rates[k] for k in ("input", "cache_write", "cache_write_1h") if rates.get(k))
    return int(
        len(body) * input_rate * NANOS_PER_RATE + MAX_TOKENS * rates["output"] * NANOS_PER_RATE
    )


def drain(received: queue.Queue) -> int:
    count = 0
    while True:
        try:
            received.get(timeout=0.5)
        except queue.Empty:
            return count
        count += 1


def post(port: int, token: str, body: bytes) -> httpx.Response:
    with httpx.Client(timeout=30) as client:  # a connection of its own: spread by HAProxy
        response = client.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            content=body,
            headers={
                "X-Monitor-Token": token,
                "Authorization": f"Bearer {API_KEY}",
                "content-type": "application/json",
            },
        )
        response.read()
        return response


def wait_for_settled(db_path: Path, count: int, timeout: float = 15) -> list[sqlite3.Row]:
    deadline = time.monotonic() + timeout
    while True:
        conn = sqlite3.connect(db_path)
        conn.row_factory = sqlite3.Row
        rows = conn.execute("select * from usage").fetchall()
        conn.close()
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


@pytest.mark.parametrize("recording_name", [JSON_RECORDING, STREAM_RECORDING])
def test_a_hard_budget_holds_across_two_workers(
    tmp_path: Path, upstream: ReplayServer, recording_name: str
) -> None:
    recording = load_recording(recording_name)
    body = request_body(recording)
    up = start_up(
        tmp_path, upstream, "--workers", "2", "--", "--set", "monitor_flush_ms=20", workers=2
    )
    try:
        reservation = worst_case_nanos(up.db_path, body)
        budget_usd = Decimal(10 * reservation) / NANOS  # affords 10 requests at their worst
        set_budget(up.db_path, str(budget_usd))
        time.sleep(1.5)  # applies within a second
        responses, admitted = burst(up, upstream, recording, body, 50, threads=50, seed=7)
        refused = [r for r in responses if r.status_code == 429]
        # The budget was used, not sat on: at least 80% of the requests it affords at their
        # worst case (more, when some settle at their lower actual cost meanwhile).
        assert admitted >= 8, [r.status_code for r in responses]
        rows = wait_for_settled(up.db_path, admitted)
        assert len(rows) == admitted
        assert all(row["priced"] == 1 for row in rows)
        spent = sum(Decimal(repr(row["cost_usd"])) for row in rows)
        assert 0 < spent <= budget_usd
        # Each refusal in OpenAI's own shape, naming the budget, with Retry-After.
        for response in refused:
            error = response.json()["error"]
            assert error["code"] in ("budget_exceeded", "budget_not_ready")
            assert "budget 1" in error["message"]
            assert int(response.headers["retry-after"]) >= 1
        exceeded = [r for r in refused if r.json()["error"]["code"] == "budget_exceeded"]
        assert exceeded
        assert "resets at 20" in exceeded[0].json()["error"]["message"]
        assert "of $" in exceeded[0].json()["error"]["message"]
        status = json.loads(invoke(up.db_path, "budgets", "list", "--json"))[0]
        assert status["spent_usd"] <= float(budget_usd)
    finally:
        assert up.stop() == 0
    # Stopped: every worker gave back what it held beyond what it spent.
    conn = sqlite3.connect(up.db_path)
    granted, used = conn.execute("select sum(granted), sum(used) from control_leases").fetchone()
    assert granted == used


def burst(
    up: Up,
    upstream: ReplayServer,
    recording: dict[str, Any],
    body: bytes,
    count: int,
    *,
    threads: int = 4,
    seed: int | None = None,
) -> tuple[list[httpx.Response], int]:
    """`count` requests sent at once, an answer queued for each: the responses, and how
    many were admitted. Every other one got a 429, and only the admitted reached the
    upstream (the refused never did)."""
    for _ in range(count):
        upstream.reply(Reply.from_recording(recording, seed=seed))
    with ThreadPoolExecutor(threads) as pool:
        responses = list(pool.map(lambda _: post(up.port, up.token, body), range(count)))
    statuses = [r.status_code for r in responses]
    admitted = statuses.count(200)
    assert admitted + statuses.count(429) == count, statuses
    assert drain(upstream.received) == admitted
    return responses, admitted


def set_limit_early_in_a_minute(up: Up, flag: str, value: int, *, by_second: int) -> None:
    """Acme's rate limit set, both workers' share of it taken (1.5 s), and the clock at
    most `by_second` seconds into a minute: what the test sends falls in one minute."""
    invoke(up.db_path, "limits", "set", "--org", "Acme", flag, str(value))
    time.sleep(1.5)
    while dt.datetime.now(dt.UTC).second > by_second:
        time.sleep(0.5)


def test_a_rate_limit_holds_across_two_workers(tmp_path: Path, upstream: ReplayServer) -> None:
    recording = load_recording(JSON_RECORDING)
    body = request_body(recording)
    up = start_up(
        tmp_path, upstream, "--workers", "2", "--", "--set", "monitor_flush_ms=20", workers=2
    )
    rpm = 100
    try:
        set_limit_early_in_a_minute(up, "--rpm", rpm, by_second=40)
        responses, admitted = burst(up, upstream, recording, body, 140)
        assert rpm * 0.95 <= admitted <= rpm, [r.status_code for r in responses]
        refused = next(r for r in responses if r.status_code == 429)
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= int(refused.headers["retry-after"]) <= 60
    finally:
        assert up.stop() == 0


def worker_pids(up_process_pid: int) -> list[int]:
    children = subprocess.run(
        ["pgrep", "-P", str(up_process_pid), "-a"], capture_output=True, text=True
    ).stdout
    return [int(line.split()[0]) for line in children.splitlines() if " proxy --mode " in line]


def test_a_killed_workers_slice_comes_back_after_the_reclaim_time(
    tmp_path: Path, upstream: ReplayServer
) -> None:
    """A worker is SIGKILLed holding a share of the budget (`up` then stops the rest, which
    give theirs back); `up` starts again on the same database, and once the dead worker
    has been silent past `monitor_reclaim_seconds` the new workers spend all of the budget
    but what the dead one had spent or reserved. Spend never exceeds the budget."""
    recording = load_recording(JSON_RECORDING)
    body = request_body(recording)
    options = ("--", "--set", "monitor_flush_ms=20", "--set", "monitor_reclaim_seconds=6")
    up = start_up(tmp_path, upstream, "--workers", "2", *options, workers=2)
    reservation = worst_case_nanos(up.db_path, body)
    budget_usd = Decimal(20 * reservation) / NANOS
    try:
        set_budget(up.db_path, str(budget_usd))
        time.sleep(1.5)  # both workers hold a share
        conn = sqlite3.connect(up.db_path)
        holders = conn.execute("select holder, granted - used from control_leases").fetchall()
        assert len(holders) == 2 and all(free > reservation for _, free in holders), holders
        victim = worker_pids(up.process.pid)[0]
        os.kill(victim, signal.SIGKILL)
        assert up.process.wait(30) != 0  # `up` stops when a worker dies
    finally:
        if up.process.poll() is None:
            up.stop()
    locked = conn.execute(
        "select granted - used from control_leases where holder like ?", (f"%:{victim}:%",)
    ).fetchone()[0]
    assert locked > reservation  # the dead worker's slice, never given back
    again = launch_up(
        tmp_path,
        upstream,
        up.db_path,
        up.token,
        "--workers",
        "2",
        *options,
        workers=2,
        log_name="up-again.log",
    )
    try:
        started = time.monotonic()
        for _ in range(60):
            upstream.reply(Reply.from_recording(recording))
        admitted = 0
        while time.monotonic() - started < 15:
            response = post(again.port, again.token, body)
            if response.status_code == 200:
                admitted += 1
            elif response.json()["error"]["code"] == "budget_exceeded":
                if time.monotonic() - started > 8:  # past the reclaim time: nothing is left
                    break
                time.sleep(0.5)
        rows = wait_for_settled(again.db_path, admitted)
        spent = sum(Decimal(repr(row["cost_usd"])) for row in rows)
        assert spent <= budget_usd
        # All of it was there to spend: what is left could not pay for one more request.
        assert budget_usd - spent < 2 * Decimal(reservation) / NANOS, (spent, budget_usd)
        assert (
            conn.execute(
                "select granted - used from control_leases where holder like ?", (f"%:{victim}:%",)
            ).fetchone()[0]
            == 0
        )
    finally:
        assert again.stop() == 0


def test_a_tokens_per_minute_limit_holds_across_two_workers(
    tmp_path: Path, upstream: ReplayServer
) -> None:
    """Tokens per minute through two workers: the requests admitted in one minute used
    no more tokens than the limit, and at least 95% of it (each reserves its prompt's
    bytes and max_tokens, and settles to the tokens its usage reports)."""
    recording = load_recording(JSON_RECORDING)
    body = request_body(recording)
    up = start_up(
        tmp_path, upstream, "--workers", "2", "--", "--set", "monitor_flush_ms=20", workers=2
    )
    tpm = 10_000
    try:
        set_limit_early_in_a_minute(up, "--tpm", tpm, by_second=30)
        minute = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M")
        responses, admitted = burst(up, upstream, recording, body, 600)
        rows = wait_for_settled(up.db_path, admitted)
        assert len(rows) == admitted and all(r["ts"].startswith(minute) for r in rows)
        used = sum(r["input_tokens"] + r["output_tokens"] for r in rows)
        assert tpm * 0.95 <= used <= tpm, (used, admitted)
        refused = next(r for r in responses if r.status_code == 429)
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    finally:
        assert up.stop() == 0


def test_a_budget_change_or_removal_applies_within_a_second(
    tmp_path: Path, upstream: ReplayServer
) -> None:
    """Through a running `up --workers 2`: a budget too small for any request refuses
    within a second of being set; raised, it admits within a second; removed, likewise.
    Each change is polled for (every 50 ms, for at most 2 s)."""
    recording = load_recording(JSON_RECORDING)
    body = request_body(recording)
    up = start_up(
        tmp_path, upstream, "--workers", "2", "--", "--set", "monitor_flush_ms=20", workers=2
    )

    def seconds_until(ok: int) -> float:
        """Seconds from now until a request (to either worker) gets status `ok`."""
        started = time.monotonic()
        while time.monotonic() - started < 2:
            upstream.reply(Reply.from_recording(recording))
            status = post(up.port, up.token, body).status_code
            if status == ok:
                # Both workers: the next request goes to the other one (HAProxy).
                upstream.reply(Reply.from_recording(recording))
                if post(up.port, up.token, body).status_code == ok:
                    return time.monotonic() - started
            time.sleep(0.05)
        return math.inf

    try:
        set_budget(up.db_path, "0.000001")
        assert seconds_until(429) <= 1.0 + 0.25  # within a second (and a refresh)
        set_budget(up.db_path, "100", "--replace")
        assert seconds_until(200) <= 1.25
        set_budget(up.db_path, "0.000001", "--replace")
        assert seconds_until(429) <= 1.25
        invoke(up.db_path, "budgets", "remove", "1")
        assert seconds_until(200) <= 1.25
    finally:
        assert up.stop() == 0
