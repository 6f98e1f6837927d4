"""Starting a real mitmdump with the monitor addon, or the dashboard, on 127.0.0.1 and
free ports."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
ADDON = ROOT / "addons" / "monitor.py"
MITMDUMP = Path(sys.executable).parent / "mitmdump"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{process.args[0]} exited with {process.returncode}:\n{log.read_text()}"
            )
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}:\n{log.read_text()}")


@contextlib.contextmanager
def running_dashboard(
    db_path: Path,
    log: Path,
    python: str | Path = sys.executable,
    cwd: Path | None = None,
    extra: tuple[str, ...] = (),
) -> Iterator[str]:
    """`llm-monitor dashboard` (with `extra` options) as a child process (of `python`);
    yields its base URL. Whatever a test sent it, it must not have logged a traceback."""
    port = free_port()
    args = ["--db", str(db_path), "dashboard", "--host", "127.0.0.1", "--port", str(port)]
    args += list(extra)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(python), "-m", "llm_monitor", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
        )
    try:
        wait_for_port(port, process, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert "Traceback" not in log.read_text(), log.read_text()


def log_in(
    browser: httpx.Client, email: str, password: str, next_path: str = "/"
) -> httpx.Response:
    """Log in to a running dashboard through its login form, as a browser does."""
    form = browser.get("/-/login", params={"next": next_path})
    csrftoken = re.search(r'name="csrftoken" value="([^"]+)"', form.text).group(1)
    return browser.post(
        "/-/login",
        data={"email": email, "password": password, "next": next_path, "csrftoken": csrftoken},
    )


def wait_for_log(proxy: Proxy, text: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while text not in proxy.log():
        if proxy.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the proxy never logged {text!r}:\n{proxy.log()}")
        time.sleep(0.02)


@dataclass
class Proxy:
    ports: dict[str, int]  # provider name -> listening port, the first one the default
    process: subprocess.Popen
    db_path: Path
    log_path: Path

    @property
    def port(self) -> int:
        return next(iter(self.ports.values()))

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def url(self, provider: str) -> str:
        return f"http://127.0.0.1:{self.ports[provider]}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 20) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


# The two ways to run the proxy: our lean launcher (what `up` runs), and mitmdump with the
# addon as a script (the README's line, with all of mitmproxy's default addons).
LAUNCHERS = {
    "proxy": [sys.executable, "-m", "llm_monitor", "proxy"],
    "mitmdump": [str(MITMDUMP), "-s", str(ADDON)],
}


@contextlib.contextmanager
def running_proxy(
    db_path: Path,
    upstream: str,
    *,
    providers: tuple[str, ...] = ("openai",),
    launcher: str = "proxy",
    **options: Any,
) -> Iterator[Proxy]:
    """`llm-monitor proxy` (or mitmdump with the addon) with one reverse-mode listener per
    provider name, all to `upstream`.

    A name may carry mitmproxy's per-listener flag, as in `groq:noinject`.
    """
    ports = {name.split(":")[0]: free_port() for name in providers}
    log_path = db_path.parent / f"{launcher}-{next(iter(ports.values()))}.log"
    args = list(LAUNCHERS[launcher])
    for port in ports.values():
        args += ["--mode", f"reverse:{upstream}@127.0.0.1:{port}"]
    names = ",".join(f"{port}:{name}" for name, port in zip(providers, ports.values(), strict=True))
    args += ["--set", f"monitor_db={db_path}", "--set", f"monitor_providers={names}"]
    args += ["--set", "monitor_flush_ms=20"]  # rows land sooner; tests wait for them
    for name, value in options.items():
        args += ["--set", f"{name}={str(value).lower() if isinstance(value, bool) else value}"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=db_path.parent,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    proxy = Proxy(ports, process, db_path, log_path)
    try:
        for port in ports.values():
            wait_for_port(port, process, log_path)
        wait_for_log(proxy, "llm-monitor: recording usage in")  # the addon is ready too
        yield proxy
    finally:
        proxy.terminate()


def rows(db_path: Path, where: str = "1", params: tuple = ()) -> list[dict[str, Any]]:
    conn = sqlite3.connect(db_path, timeout=5)
    conn.row_factory = sqlite3.Row
    try:
        return [
            dict(r) for r in conn.execute(f"select * from usage where {where} order by id", params)
        ]
    finally:
        conn.close()


def wait_for_rows(
    db_path: Path, where: str, params: tuple = (), count: int = 1, timeout: float = 10
) -> list[dict[str, Any]]:
    """Rows land a few milliseconds after the response (the recorder batches); wait for them."""
    deadline = time.monotonic() + timeout
    while True:
        found = rows(db_path, where, params)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def row_for(db_path: Path, request_id: str, timeout: float = 10) -> dict[str, Any]:
    found = wait_for_rows(db_path, "request_id = ?", (request_id,), timeout=timeout)
    assert len(found) == 1, f"expected one row for {request_id}, found {len(found)}"
    return found[0]
