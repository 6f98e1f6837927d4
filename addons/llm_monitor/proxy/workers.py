"""More than one core: N mitmdump processes behind HAProxy, all writing one database.

mitmproxy cannot share a listening port between processes (no SO_REUSEPORT), so each
worker listens on ports of its own on 127.0.0.1 and HAProxy (Debian's package) spreads
connections over them in TCP mode: keep-alive connections stay with one worker, streams
pass through untouched. `up --workers N` starts all of them and stops all of them together;
on SIGHUP it restarts them one at a time, HAProxy's runtime API taking each out of rotation
first. With `up --tls-cert` HAProxy also terminates TLS (then even for one worker).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TextIO

from llm_monitor.proxy import metrics
from llm_monitor.proxy.launch import proxy_command
from llm_monitor.proxy.master import HUP_IGNORED


@dataclass(frozen=True)
class Listener:
    name: str
    upstream: str
    port: int


# Internal ports (workers, the dashboard behind HAProxy) come from below the kernel's
# ephemeral range: a worker binds its port a second or more after it was chosen, and
# meanwhile any outgoing connection (HAProxy's health checks among them) or another
# server's `bind(0)` may take a port from that range.
INTERNAL_PORTS = range(20000, 32768)


def free_ports(count: int, avoid: Collection[int] = ()) -> list[int]:
    """`count` distinct ports free on 127.0.0.1 now, none of `avoid` (public ports not
    bound yet), from `INTERNAL_PORTS` when it lies below the ephemeral range, else any the
    kernel gives."""
    low = ephemeral_low()
    candidates = [p for p in INTERNAL_PORTS if p < low and p not in avoid]
    random.shuffle(candidates)
    found: list[int] = []
    for port in candidates:
        if len(found) == count:
            break
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        found.append(port)
    while len(found) < count:  # no room below the ephemeral range
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            if (port := s.getsockname()[1]) not in found and port not in avoid:
                found.append(port)
    return found


def ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux's default when unknown)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def haproxy_config(
    host: str,
    backends: dict[str, tuple[int, list[int]]],
    *,
    admin_socket: str | Path | None = None,
    tls_cert: str | Path | None = None,
) -> str:
    """One frontend per listener (public port), one backend with a server per worker.

    `admin_socket`: HAProxy's runtime API, which a rolling restart uses to take one worker
    out of rotation at a time. `tls_cert` (certificate and key in one PEM file): the
    frontends terminate TLS and pass plain TCP to the workers."""
    lines = ["global"]  # maxconn left to HAProxy: it follows the file-descriptor limit
    if admin_socket is not None:
        lines.append(f"    stats socket {admin_socket} mode 600 level admin")
    lines += [
        "defaults",
        "    mode tcp",
        "    timeout connect 5s",
        "    timeout client 1h",
        "    timeout server 1h",
        # Once a worker has closed a connection, its client has 5 s to close its side (an
        # idle keep-alive connection in a client's pool would otherwise hold HAProxy's
        # soft stop for `timeout client`).
        "    timeout client-fin 5s",
        "    timeout server-fin 5s",
        # A worker that has just closed its port (draining, restarting): try another one.
        "    retries 3",
        "    option redispatch",
    ]
    ssl = f" ssl crt {tls_cert}" if tls_cert is not None else ""
    for name, (public, internal) in backends.items():
        lines += [
            f"frontend {name}",
            f"    bind {host}:{public}{ssl}",
            f"    default_backend {name}",
        ]
        lines += [f"backend {name}", "    balance leastconn"]
        lines += [f"    server w{i} 127.0.0.1:{port}" for i, port in enumerate(internal)]
    return "\n".join(lines) + "\n"


class HAProxyAdmin:
    """HAProxy's runtime API over its admin socket: one command per connection."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(self.path)
            s.sendall(line.encode() + b"\n")
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
        return answer.decode(errors="replace")

    def set_state(self, backends: Sequence[str], server: str, state: str) -> None:
        """`ready`, `drain` (no new connections, the open ones continue) or `maint`."""
        for backend in backends:
            if answer := self.command(f"set server {backend}/{server} state {state}").strip():
                raise RuntimeError(f"HAProxy: set server {backend}/{server}: {answer}")

    def wait_until_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.command("show info")
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("HAProxy did not open its admin socket") from None
                time.sleep(0.05)


READY_LINE = b"llm-monitor: recording usage in"


class Worker:
    """One `llm-monitor proxy` process. Its output is passed on line by line, watched for
    the addon's start-up line: before that line the worker answers 503."""

    def __init__(self, command: Sequence[str], env: dict[str, str] | None) -> None:
        self.ready = threading.Event()
        self.process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for source, target in (
            (self.process.stdout, sys.stdout),
            (self.process.stderr, sys.stderr),
        ):
            threading.Thread(target=self._relay, args=(source, target), daemon=True).start()

    def _relay(self, source: IO[bytes], target: TextIO) -> None:
        for line in source:
            if not self.ready.is_set() and READY_LINE in line:
                self.ready.set()
            try:
                target.buffer.write(line)
                target.buffer.flush()
            except (OSError, ValueError):  # our own output is gone: keep draining the pipe
                pass

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.05):
            if self.process.poll() is not None or time.monotonic() > deadline:
                return False
        return True


# Alerts are evaluated and delivered by the first worker alone: each evaluation reads the
# same recent rows, and every other worker would only repeat it on the same cores.
ALERTS_OFF = ("--set", "monitor_alerts_seconds=0")


def run(
    db_path: str,
    host: str,
    listeners: Sequence[Listener],
    workers: int,
    extra: Sequence[str],
    also: Sequence[Sequence[str]] = (),
    *,
    metrics_port: int | None = None,
    tls_cert: str | None = None,
    dashboard: tuple[int, int] | None = None,
) -> int:
    """Start HAProxy, the workers and `also` (the dashboard); when any of them exits, or
    on SIGTERM/SIGINT, stop them all (each worker writes what it has queued first). On
    SIGHUP, restart the workers one at a time (see `Pool.rolling_restart`).

    With `metrics_port`, the workers run in prometheus-client's multiprocess mode (their
    series in files of a directory of this run) and this process serves their sum. With
    `tls_cert`, HAProxy terminates TLS on the listeners' ports and, with `dashboard`
    (public port, internal port), on the dashboard's."""
    haproxy = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
    if haproxy is None:
        raise RuntimeError("--workers and --tls-cert need HAProxy: apt-get install haproxy")
    public = {x.port for x in listeners} | set(dashboard or ()) | {metrics_port or 0}
    chosen = free_ports(workers * len(listeners), avoid=public)
    ports = [chosen[w * len(listeners) : (w + 1) * len(listeners)] for w in range(workers)]
    backends = {
        listener.name: (listener.port, [ports[w][i] for w in range(workers)])
        for i, listener in enumerate(listeners)
    }

    def worker_command(w: int) -> list[str]:
        found = {x.name: (x.upstream, port) for x, port in zip(listeners, ports[w], strict=True)}
        return [*proxy_command(db_path, "127.0.0.1", found), *extra, *(ALERTS_OFF if w else ())]

    with tempfile.TemporaryDirectory(prefix="llm-monitor-") as tmp:
        config = Path(tmp) / "haproxy.cfg"
        admin_socket = Path(tmp) / "haproxy.sock"
        balanced = dict(backends)
        if dashboard is not None:
            balanced[DASHBOARD_BACKEND] = (dashboard[0], [dashboard[1]])
        config.write_text(
            haproxy_config(host, balanced, admin_socket=admin_socket, tls_cert=tls_cert)
        )
        env = None
        server = None
        shared = None
        if metrics_port is not None:
            shared = Path(tmp) / "metrics"
            shared.mkdir()
            env = {**os.environ, metrics.MULTIPROC_ENV: str(shared)}
            server = metrics.serve_multiprocess(metrics_port, host, shared)
        pool = Pool(
            [Worker(worker_command(w), env) for w in range(workers)],
            worker_command,
            env,
            list(backends),
            HAProxyAdmin(admin_socket),
            shared,
        )
        balancer = subprocess.Popen([haproxy, "-db", "-f", str(config)])
        others = [balancer, *(subprocess.Popen(command) for command in also)]
        try:
            status = pool.supervise(others, soft={balancer.pid})
        finally:
            if server is not None:
                server.shutdown()
    print("llm-monitor: all workers stopped", file=sys.stderr)
    return status


DASHBOARD_BACKEND = "dashboard"
# How long a new worker may take to start (imports, the database, its listeners).
START_TIMEOUT = 60


class Pool:
    """The workers of `up --workers N`, the processes next to them, and their signals."""

    def __init__(
        self,
        workers: list[Worker],
        command: Callable[[int], list[str]],
        env: dict[str, str] | None,
        backends: list[str],
        admin: HAProxyAdmin,
        metrics_dir: Path | None,
    ) -> None:
        self.workers = workers
        self.command = command
        self.env = env
        self.backends = backends
        self.admin = admin
        self.metrics_dir = metrics_dir
        self.stopping = False
        self.restart_wanted = False

    def supervise(self, others: list[subprocess.Popen], soft: set[int]) -> int:
        """Until a signal, or until a process exits by itself; then stop them all."""

        def stop(*_: object) -> None:
            self.stopping = True

        def hup(*_: object) -> None:
            self.restart_wanted = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, hup)
        status = 0
        while not self.stopping and all(p.poll() is None for p in self.processes(others)):
            if self.restart_wanted:
                self.restart_wanted = False
                if not self.rolling_restart():
                    status = 1
                    break
            time.sleep(0.1)
        return _stop(self.processes(others), soft) or status

    def processes(self, others: list[subprocess.Popen]) -> list[subprocess.Popen]:
        """Workers first, so that `_stop` stops them last."""
        return [*(w.process for w in self.workers), *others]

    def rolling_restart(self) -> bool:
        """Restart the workers one at a time (an upgrade: the new ones run the code now
        installed). For each: HAProxy stops giving it new connections, it drains its own
        (answers ask clients to close, so keep-alive connections move to the others) and
        exits; a new one starts on the same ports and rejoins once it records. Returns
        False if a new worker did not start (the caller then stops everything)."""
        if len(self.workers) < 2:
            print(HUP_IGNORED, file=sys.stderr)
            return True
        self.admin.wait_until_listening(START_TIMEOUT)
        print("llm-monitor: rolling restart", file=sys.stderr)
        for i, old in enumerate(self.workers):
            if self.stopping:
                return True
            self.admin.set_state(self.backends, f"w{i}", "drain")
            old.process.send_signal(signal.SIGTERM)
            try:
                old.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                old.process.kill()
                old.process.wait()
            if self.metrics_dir is not None:
                metrics.worker_exited(old.process.pid, self.metrics_dir)
            new = Worker(self.command(i), self.env)
            self.workers[i] = new
            if not new.wait_ready(START_TIMEOUT):
                print(f"llm-monitor: worker w{i} did not start after SIGHUP", file=sys.stderr)
                return False
            self.admin.set_state(self.backends, f"w{i}", "ready")
            print(f"llm-monitor: worker w{i} restarted (pid {new.process.pid})", file=sys.stderr)
        print("llm-monitor: rolling restart done", file=sys.stderr)
        return True


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
    signal.signal(signal.SIGHUP, lambda *_: print(HUP_IGNORED, file=sys.stderr))
    while not stopping and all(child.poll() is None for child in children):
        time.sleep(0.1)
    return _stop(children, soft)


def _stop(children: list[subprocess.Popen], soft: set[int] = frozenset()) -> int:
    """Last started first: the dashboard, HAProxy (a soft stop, SIGUSR1: it stops listening
    and lets the connections it carries finish), then the workers, which drain them."""
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
