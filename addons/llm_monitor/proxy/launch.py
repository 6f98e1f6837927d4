"""How the proxy is started: the default listeners, `--listen` values, and the command line
of one proxy process (`llm-monitor proxy`). `llm-monitor up`, the demo and the workers
share it."""

from __future__ import annotations

import socket
import sys

from mitmproxy.net import server_spec

from llm_monitor.errors import Invalid

# name: (upstream, port)
DEFAULT_LISTENERS = {
    "openai": ("https://api.openai.com", 8080),
    "anthropic": ("https://api.anthropic.com", 8081),
    "gemini": ("https://generativelanguage.googleapis.com", 8082),
    "xai": ("https://api.x.ai", 8083),
}


def parse_listen(value: str) -> tuple[str, str, int]:
    """`NAME=UPSTREAM@PORT`, e.g. `groq=https://api.groq.com@8084`."""
    name, sep, rest = value.partition("=")
    upstream, at, port = rest.rpartition("@")
    if not sep or not at or not port.isdigit() or not name.strip() or not upstream:
        raise Invalid(f"{value!r} is not NAME=UPSTREAM@PORT (e.g. groq=https://api.groq.com@8084)")
    try:
        server_spec.parse(upstream, default_scheme="https")
    except ValueError:
        raise Invalid(
            f"{upstream!r}: an upstream is scheme://host[:port], without a path (put the "
            "path, e.g. /openai/v1, in the client's base URL)"
        ) from None
    return name.strip().lower(), upstream, int(port)


def proxy_command(db_path: str, host: str, listeners: dict[str, tuple[str, int]]) -> list[str]:
    """`llm-monitor proxy` (this Python's) with one reverse-proxy listener per provider."""
    args = [sys.executable, "-m", "llm_monitor", "--db", db_path, "proxy"]
    for upstream, port in listeners.values():
        args += ["--mode", f"reverse:{upstream}@{host}:{port}"]
    names = ",".join(f"{port}:{name}" for name, (_, port) in listeners.items())
    return [*args, "--set", f"monitor_providers={names}"]


def busy_ports(host: str, ports: dict[str, int]) -> list[str]:
    """`NAME port N` for each of `ports` that cannot be bound on `host` now (in use, or
    not allowed), checked before anything starts."""
    busy = []
    for name, port in ports.items():
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's servers
            try:
                s.bind((host, port))
            except OSError as e:
                busy.append(f"port {port} ({name}) on {host}: {e.strerror}")
    return busy
