"""`llm-monitor up` runs the proxy as documented."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from llm_monitor.proxy import workers
from tests.conftest import API_KEY, invoke, new_org
from tests.proxy import free_port, row_for, wait_for_port, wait_for_rows
from tests.replay import ReplayServer, Reply, load_recording

LLM_MONITOR = Path(sys.executable).parent / "llm-monitor"


@dataclass
class Up:
    process: subprocess.Popen
    db_path: Path
    token: str
    port: int
    dashboard_port: int
    log: Path

    def stop(self) -> int:
        self.process.terminate()
        return self.process.wait(30)


def start_up(tmp_path: Path, upstream: ReplayServer, *args: str, workers: int = 1) -> Up:
    """`llm-monitor up` with one OpenAI listener in front of the replay upstream, once every
    worker's addon is ready (before that, requests get a 503)."""
    db_path = tmp_path / "llm-monitor.db"
    invoke(db_path, "init")
    token = new_org(db_path, "Acme")
    return launch_up(tmp_path, upstream, db_path, token, *args, workers=workers)


def launch_up(
    tmp_path: Path,
    upstream: ReplayServer,
    db_path: Path,
    token: str,
    *args: str,
    workers: int = 1,
    log_name: str = "up.log",
) -> Up:
    """`start_up` on a database made already (e.g. to start again after a crash)."""
    port, dashboard_port = free_port(), free_port()
    log = tmp_path / log_name
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(LLM_MONITOR),
                "--db",
                str(db_path),
                "up",
                "--no-defaults",
                "--listen",
                f"openai=http://127.0.0.1:{upstream.port}@{port}",
                "--dashboard-port",
                str(dashboard_port),
                *args,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    up = Up(process, db_path, token, port, dashboard_port, log)
    wait_for_port(port, process, log)
    deadline = time.monotonic() + 20
    while log.read_text().count("llm-monitor: recording usage in") < workers:
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    return up


def test_up_runs_the_proxy(tmp_path: Path, upstream: ReplayServer) -> None:
    up = start_up(tmp_path, upstream)
    try:
        recording = load_recording("openai/chat_json_text_gpt-4o.json")
        reply = upstream.reply(Reply.from_recording(recording))
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{up.port}/v1",
            api_key=API_KEY,
            default_headers={"X-Monitor-Token": up.token},
            max_retries=0,
        )
        client.chat.completions.create(**recording["request"]["body"])
        row = row_for(up.db_path, reply.request_id)
        # The dashboard runs next to the proxy, on its own port.
        wait_for_port(up.dashboard_port, up.process, up.log)
        login = httpx.get(f"http://127.0.0.1:{up.dashboard_port}/-/login")
        assert login.status_code == 200 and "Log in to LLM Monitor" in login.text
    finally:
        assert up.stop() == 0
    assert (row["provider"], row["input_tokens"], row["priced"]) == ("openai", 16, 1)
    expected = f"openai: http://127.0.0.1:{up.port} -> http://127.0.0.1:{upstream.port}"
    assert expected in up.log.read_text()


def test_internal_ports_are_free_and_below_the_ephemeral_range() -> None:
    """A worker binds its port a second after it is chosen: no outgoing connection or
    bind(0) may take it meanwhile, so it comes from below the ephemeral range."""
    public = set(workers.INTERNAL_PORTS[::2])  # half of them taken by public ports
    ports = workers.free_ports(6, avoid=public)
    assert len(set(ports)) == 6
    assert all(1024 < port < workers.ephemeral_low() for port in ports)
    assert not public & set(ports)
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # raises if it was not free


def test_up_refuses_bad_listeners(tmp_path: Path) -> None:
    for args in (
        ["--listen", "nonsense"],
        ["--listen", "groq=https://api.groq.com/openai@8084"],
        ["--no-defaults"],
        ["--listen", "a=http://x@9000", "--listen", "b=http://y@9000"],
    ):
        result = subprocess.run(
            [str(LLM_MONITOR), "--db", str(tmp_path / "x.db"), "up", *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 2, result
        assert "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith("Error:")


HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")


@pytest.mark.skipif(HAPROXY is None, reason="HAProxy is not installed (apt-get install haproxy)")
def test_up_with_two_workers_behind_haproxy(tmp_path: Path, upstream: ReplayServer) -> None:
    up = start_up(
        tmp_path, upstream, "--workers", "2", "--", "--set", "monitor_flush_ms=20", workers=2
    )
    port, token, db_path, process = up.port, up.token, up.db_path, up.process
    try:
        children = subprocess.run(
            ["pgrep", "-P", str(process.pid), "-a"], capture_output=True, text=True
        ).stdout
        lines = children.splitlines()
        child_pids = [int(line.split()[0]) for line in lines]
        workers = [line for line in lines if " proxy --mode " in line]
        assert len(workers) == 2, children
        # The first worker alone evaluates alerts: the other would repeat its reads.
        assert sum("monitor_alerts_seconds=0" in line for line in workers) == 1, children
        assert sum("haproxy -db" in line for line in lines) == 1, children
        recording = load_recording("openai/chat_json_text_gpt-4o.json")
        replies = [upstream.reply(Reply.from_recording(recording)) for _ in range(20)]
        for _ in replies:  # a new connection each time: HAProxy spreads them over the workers
            assert (
                httpx.post(
                    f"http://127.0.0.1:{port}/v1/chat/completions",
                    json=recording["request"]["body"],
                    headers={"X-Monitor-Token": token},
                ).status_code
                == 200
            )
        ids = tuple(r.request_id for r in replies)
        found = wait_for_rows(
            db_path, f"request_id in ({','.join('?' * len(ids))})", ids, count=len(ids)
        )
        assert len(found) == len(ids)
    finally:
        assert up.stop() == 0
    assert "all workers stopped" in up.log.read_text()
    for pid in child_pids:  # stopped with it, not left behind as orphans
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
