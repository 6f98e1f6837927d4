"""More than one core: N mitmdump processes behind HAProxy, all writing one database.

mitmproxy cannot share a listening port between processes (no SO_REUSEPORT), so each
worker listens on ports of its own on 127.0.0.1 and HAProxy (Debian's package) spreads
connections over them in TCP mode: keep-alive connections stay with one worker, streams
pass through untouched. `up --workers N` starts all of them and stops all of them together.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from llm_monitor.proxy import metrics
from llm_monitor.proxy.launch import proxy_command


@dataclass(frozen=True)
class Listener:
    name: str
    upstream: str
    port: int


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def haproxy_config(host: str, backends: dict[str, tuple[int, list[int]]]) -> str:
    """One frontend per listener (public port), one backend with a server per worker."""
    lines = [
        "global",  # maxconn left to HAProxy: it follows the file-descriptor limit
        "defaults",
        "    mode tcp",
        "    timeout connect 5s",
        "    timeout client 1h",
        "    timeout server 1h",
    ]
    for name, (public, internal) in backends.items():
        lines += [f"frontend {name}", f"    bind {host}:{public}", f"    default_backend {name}"]
        lines += [f"backend {name}", "    balance leastconn"]
        lines += [f"    server w{i} 127.0.0.1:{port}" for i, port in enumerate(internal)]
    return "\n".join(lines) + "\n"


def run(
    db_path: str,
    host: str,
    listeners: Sequence[Listener],
    workers: int,
    extra: Sequence[str],
    also: Sequence[Sequence[str]] = (),
    *,
    metrics_port: int | None = None,
) -> int:
    """Start HAProxy, the workers and `also` (the dashboard); when any of them exits, or
    on SIGTERM/SIGINT, stop them all (each worker writes what it has queued first).

    With `metrics_port`, the workers run in prometheus-client's multiprocess mode (their
    series in files of a directory of this run) and this process serves their sum."""
    haproxy = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
    if haproxy is None:
        raise RuntimeError("--workers needs HAProxy: apt-get install haproxy")
    ports = [free_ports(len(listeners)) for _ in range(workers)]
    backends = {
        listener.name: (listener.port, [ports[w][i] for w in range(workers)])
        for i, listener in enumerate(listeners)
    }

    def worker_listeners(w: int) -> dict[str, tuple[str, int]]:
        return {x.name: (x.upstream, port) for x, port in zip(listeners, ports[w], strict=True)}

    with tempfile.TemporaryDirectory(prefix="llm-monitor-") as tmp:
        config = Path(tmp) / "haproxy.cfg"
        config.write_text(haproxy_config(host, backends))
        env = None
        server = None
        if metrics_port is not None:
            shared = Path(tmp) / "metrics"
            shared.mkdir()
            env = {**os.environ, metrics.MULTIPROC_ENV: str(shared)}
            server = metrics.serve_multiprocess(metrics_port, host, shared)
        children = [
            subprocess.Popen(
                [*proxy_command(db_path, "127.0.0.1", worker_listeners(w)), *extra], env=env
            )
            for w in range(workers)
        ]
        balancer = subprocess.Popen([haproxy, "-db", "-f", str(config)])
        children.append(balancer)
        children += [subprocess.Popen(command) for command in also]
        try:
            # HAProxy's soft stop (SIGUSR1): it stops listening and lets the connections it
            # carries finish, while each worker drains them.
            status = _supervise(children, soft={balancer.pid})
        finally:
            if server is not None:
                server.shutdown()
    print("llm-monitor: all workers stopped", file=sys.stderr)
    return status


def supervise(commands: Sequence[Sequence[str]]) -> int:
    """Run the commands together until one exits or a signal comes; then stop them all."""
    return _supervise([subprocess.Popen(command) for command in commands])


# The workers drain for monitor_drain_seconds (default 30), then write what they queued.
STOP_TIMEOUT = 75


def _supervise(children: list[subprocess.Popen], soft: set[int] = frozenset()) -> int:
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping and all(child.poll() is None for child in children):
        time.sleep(0.1)
    # Last started first: the dashboard, HAProxy (no new connections), then the workers.
    for child in reversed(children):
        if child.poll() is None:
            child.send_signal(signal.SIGUSR1 if child.pid in soft else signal.SIGTERM)
    status = 0
    for child in reversed(children):
        try:
            child.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        if child.returncode not in (0, -signal.SIGTERM) and not status:
            status = child.returncode
    return status
