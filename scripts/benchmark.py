"""What the proxy costs: the same load direct, through bare mitmdump, mitmdump with the
addon, the lean master alone and `llm-monitor proxy` (the lean master with the addon).

    .venv/bin/python scripts/benchmark.py                      # JSON and SSE, all five paths
    .venv/bin/python scripts/benchmark.py peers                # and LiteLLM, Portkey
    .venv/bin/python scripts/benchmark.py --requests 100000 --only addon --kind json   # memory
    .venv/bin/python scripts/benchmark.py --soak                # 200 streams x 30 s
    .venv/bin/python scripts/benchmark.py --recorder            # the recorder alone

Everything runs on 127.0.0.1: a fast OpenAI-shaped upstream (its own process), the proxy
(its own process, pinned to a core of its own), and a keep-alive load generator (this
process, asyncio). Prints a table
and writes the figures as JSON (--out).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CHAT_BODY = json.dumps(
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hi"}]}
).encode()
STREAM_BODY = json.dumps(
    {
        "model": "gpt-4o-mini",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "Say hi"}],
    }
).encode()
# Time to first token is measured as a model streams: a few streams at once, their events
# PACED_INTERVAL_MS apart (a stream lasts ~120 ms), so that the proxy is not saturated and
# what is measured is the delay it adds, not a queue. The streams start PACED_STREAM_S /
# TTFT_CONCURRENCY apart: started together, they would stay in step (each lasts as long),
# and every request would wait behind the others' at the proxy. Throughput ("sse") is
# measured with events back to back, at full load.
PACED_MARKER = "bench-paced"
PACED_BODY = json.dumps(
    {
        "model": "gpt-4o-mini",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "Say hi"}],
        "user": PACED_MARKER,
    }
).encode()
PACED_INTERVAL_MS = 5.0
PACED_STREAM_S = 0.12
TTFT_CONCURRENCY = 4
TTFT_REQUESTS = 300
KINDS = ("json", "sse", "ttft")
BODIES = {"json": CHAT_BODY, "sse": STREAM_BODY, "ttft": PACED_BODY}

# `--headers sdk`: what an official SDK sends and the provider answers with, where the
# default load has five request headers and three response headers. The OpenAI Python
# SDK's own request headers (x-stainless-*: its telemetry), and the response headers
# OpenAI's API reference documents (organisation, version, processing time, rate limits,
# request id) with those of the CDN in front of it.
SDK_REQUEST_HEADERS = {
    "accept": "application/json",
    "accept-encoding": "gzip, deflate",
    "user-agent": "OpenAI/Python 1.109.1",
    "x-stainless-lang": "python",
    "x-stainless-package-version": "1.109.1",
    "x-stainless-os": "Linux",
    "x-stainless-arch": "x64",
    "x-stainless-runtime": "CPython",
    "x-stainless-runtime-version": "3.12.1",
    "x-stainless-async": "false",
    "x-stainless-retry-count": "0",
    "x-stainless-read-timeout": "600",
}
SDK_RESPONSE_HEADERS = b"".join(
    b"%s: %s\r\n" % (name.encode(), value.encode())
    for name, value in {
        "date": "Wed, 02 Dec 2026 18:00:00 GMT",
        "access-control-expose-headers": "X-Request-ID",
        "openai-organization": "user-bench",
        "openai-processing-ms": "312",
        "openai-project": "proj_bench",
        "openai-version": "2020-10-01",
        "x-envoy-upstream-service-time": "316",
        "x-ratelimit-limit-requests": "10000",
        "x-ratelimit-limit-tokens": "30000000",
        "x-ratelimit-remaining-requests": "9999",
        "x-ratelimit-remaining-tokens": "29999990",
        "x-ratelimit-reset-requests": "6ms",
        "x-ratelimit-reset-tokens": "0s",
        "strict-transport-security": "max-age=31536000; includeSubDomains; preload",
        "cf-cache-status": "DYNAMIC",
        "x-content-type-options": "nosniff",
        "server": "cloudflare",
        "cf-ray": "8f0b0c0d0e0f1a2b-SJC",
    }.items()
)
HEADER_SETS = ("minimal", "sdk")


def sdk_request_headers(headers: str) -> dict[str, str] | None:
    """The request headers a header set adds to the load (its upstream answers with
    `SDK_RESPONSE_HEADERS` when there are some)."""
    return SDK_REQUEST_HEADERS if headers == "sdk" else None


headers_option = click.option(
    "--headers",
    type=click.Choice(HEADER_SETS),
    default="minimal",
    show_default=True,
    help="sdk: requests and answers carry an SDK's and OpenAI's headers (17 and 21).",
)


STREAM_LOADS = ("no", "asked", "sdk")

stream_option = click.option(
    "--stream",
    type=click.Choice(STREAM_LOADS),
    default="no",
    show_default=True,
    help="The load's requests as streams: asked, with stream_options.include_usage; sdk, "
    "without it, as the SDKs send them (the proxy asks for usage on their behalf).",
)


def streamed(body: bytes, stream: str) -> bytes:
    """The JSON load's body (two words or `--prompt-kb`'s conversation) as a stream
    request, asking for usage or not; as it is for `no`."""
    if stream == "no":
        return body
    request = json.loads(body)
    request["stream"] = True
    if stream == "asked":
        request["stream_options"] = {"include_usage": True}
    return json.dumps(request).encode()


def conversation_body(prompt_kb: int) -> bytes:
    """A chat completion request whose messages hold about `prompt_kb` KB: a conversation
    so far, turns of prose with punctuation and a non-ASCII letter, as an application sends
    one. What the proxy does per byte of a request (parse it, digest it) shows here; the
    default load's two words hide it."""
    turn = 'Here is what was said before, with commas, a "quote", numbers like 3.5 and é. '
    messages: list[dict[str, str]] = []
    size = 0
    while size < prompt_kb * 1024:
        role = "user" if len(messages) % 2 == 0 else "assistant"
        messages.append({"role": role, "content": turn * 4})
        size += len(json.dumps(messages[-1])) + 2
    messages.append({"role": "user", "content": "Say hi"})
    return json.dumps({"model": "gpt-4o-mini", "messages": messages}).encode()


def use_prompt(ctx: click.Context, param: click.Parameter, prompt_kb: int) -> int:
    """`--prompt-kb`'s callback: the JSON load's body, for every path of the run."""
    if prompt_kb:
        BODIES["json"] = conversation_body(prompt_kb)
    return prompt_kb


prompt_option = click.option(
    "--prompt-kb",
    type=click.IntRange(0, 4096),
    default=0,
    show_default=True,
    expose_value=False,
    callback=use_prompt,
    help="JSON requests carry a conversation of about this many KB (0: two words).",
)


# The upstream: a minimal HTTP/1.1 server, fast enough not to be what is measured.

JSON_REPLY = json.dumps(
    {
        "id": "chatcmpl-b",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hi!"},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 9,
            "completion_tokens": 3,
            "total_tokens": 12,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
    }
).encode()


def sse_event(content: str | None, usage: bool = False, asked: bool = True) -> bytes:
    """A chat completion chunk as OpenAI streams it: with `"usage": null` (and a last chunk
    holding the usage) only when the request asked for usage."""
    chunk = {
        "id": "chatcmpl-b",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": []
        if usage
        else [{"index": 0, "delta": {"content": content}, "finish_reason": None}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
        if usage
        else None,
    }
    if not asked:
        del chunk["usage"]
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def serve_upstream(
    port: int, first_event_ms: float, events: int, interval_ms: float, sdk_headers: bool = False
) -> None:
    extra = SDK_RESPONSE_HEADERS if sdk_headers else b""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                body = await reader.readexactly(length) if length else b""
                interval = PACED_INTERVAL_MS if PACED_MARKER.encode() in body else interval_ms
                if b'"stream": true' in body or b'"stream":true' in body:
                    asked = b'"include_usage": true' in body or b'"include_usage":true' in body
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n%s"
                        b"x-request-id: req_b\r\ntransfer-encoding: chunked\r\n\r\n" % extra
                    )
                    await writer.drain()
                    await asyncio.sleep(first_event_ms / 1000)
                    for i in range(events):
                        if i and interval:
                            await asyncio.sleep(interval / 1000)
                        writer.write(chunk(sse_event("tok", asked=asked)))
                        await writer.drain()
                    last = sse_event(None, usage=True) if asked else b""
                    writer.write(chunk(last + b"data: [DONE]\n\n") + b"0\r\n\r\n")
                else:
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n%s"
                        b"x-request-id: req_b\r\ncontent-length: %d\r\n\r\n%s"
                        % (extra, len(JSON_REPLY), JSON_REPLY)
                    )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


# The load generator: C keep-alive connections, N requests in all.


@dataclass
class Timing:
    latency: list[float] = field(default_factory=list)  # seconds, request sent to last byte
    ttft: list[float] = field(default_factory=list)  # seconds, to the first body byte
    errors: int = 0


async def one_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes, timing: Timing
) -> None:
    started = time.perf_counter()
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    chunked = b"transfer-encoding: chunked" in head.lower()
    first = None
    if chunked:
        while True:
            size = int((await reader.readline()).strip(), 16)
            if first is None:
                first = time.perf_counter()
            if size == 0:
                await reader.readline()
                break
            await reader.readexactly(size + 2)
    else:
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        first = time.perf_counter()
    done = time.perf_counter()
    if status != 200:
        timing.errors += 1
    timing.latency.append(done - started)
    timing.ttft.append(first - started)


async def load(
    port: int,
    requests: int,
    concurrency: int,
    body: bytes,
    token: str,
    path: str = "/v1/chat/completions",
    timeout: float = 600,
    headers: dict[str, str] | None = None,
    stagger: float = 0.0,
) -> Timing:
    """`requests` in all over `concurrency` keep-alive connections, the connections
    opened `stagger` seconds apart."""
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    request = (
        f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nauthorization: Bearer sk-bench\r\n"
        f"x-monitor-token: {token}\r\ncontent-type: application/json\r\n{extra}"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body
    timing = Timing()
    remaining = [requests]

    async def worker(number: int) -> None:
        await asyncio.sleep(number * stagger)
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**20)
        try:
            while remaining[0] > 0:
                remaining[0] -= 1
                await one_request(reader, writer, request, timing)
        finally:
            writer.close()

    await asyncio.wait_for(asyncio.gather(*(worker(n) for n in range(concurrency))), timeout)
    return timing


# Processes.


def harness_loop() -> Any:
    """The event loop of the load generator and the upstream: uvloop's when installed
    (`pip install -e '.[bench]'`), which leaves more of the machine to what is measured."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run_harness(coroutine: Any) -> Any:
    return asyncio.run(coroutine, loop_factory=harness_loop())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def rss_kb(pid: int, field_name: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process (all its threads) has used so far."""
    return cpu_seconds_of(Path(f"/proc/{pid}/stat"))


def cpu_seconds_of(stat: Path) -> float:
    """User and system CPU time from a `/proc/.../stat` file (a process's or a thread's)."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pin(pid: int, cpus: set[int]) -> None:
    """Keep the proxy on its own core, away from the load generator and the upstream, so
    that what is measured is the proxy and not who got the CPU (2 cores here)."""
    if len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(pid, cpus)


PROXY_CPU = {1}
OTHER_CPUS = {0}


@contextlib.contextmanager
def process(
    args: list[str],
    port: int,
    log: Path,
    cpus: set[int] = OTHER_CPUS,
    env: dict[str, str] | None = None,
    ready_timeout: float = 20,
) -> Iterator[subprocess.Popen]:
    """Run `args` pinned to `cpus` from its first instruction (taskset, so that threads a
    runtime starts at once, as node's do, are pinned too) until it listens on `port`."""
    if len(os.sched_getaffinity(0)) > 1 and shutil.which("taskset"):
        args = ["taskset", "-c", ",".join(map(str, sorted(cpus))), *args]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    pin(proc.pid, cpus)
    try:
        wait_for_port(port, ready_timeout)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def upstream(
    port: int,
    workdir: Path,
    cpus: set[int] = OTHER_CPUS,
    sdk_headers: bool = False,
    **options: float,
) -> contextlib.AbstractContextManager[subprocess.Popen]:
    """The fast upstream (`serve-upstream`) in a process of its own."""
    args = [sys.executable, __file__, "serve-upstream", "--port", str(port)]
    for name, value in options.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    if sdk_headers:
        args.append("--sdk-headers")
    return process(args, port, workdir / "upstream.log", cpus)


# The paths that run a proxy process.
PROXY_PATHS = ("bare", "addon", "lean", "proxy")
# Measured only when asked for (--only): controls is `proxy` with a hard budget and a rate
# limit on every request (both high enough never to refuse one); proxy-metrics is
# `llm-monitor proxy` with its Prometheus metrics on (the endpoint served, not scraped
# during the run); proxy-uvloop is `llm-monitor proxy` on uvloop, which needs mitmproxy's
# eager task factory left out (uvloop 0.23 rejects its `eager_start`).
OPTIONAL_PATHS = ("controls", "proxy-metrics", "proxy-uvloop")
RECORDING_PATHS = ("addon", "proxy", "controls", "proxy-metrics", "proxy-uvloop")


def proxy_options(path: str, upstream: int, port: int, kind: str) -> list[str]:
    """The `--mode` and `--set` lines every proxy gets (see `proxy_args`)."""
    options = [
        "--mode",
        f"reverse:http://127.0.0.1:{upstream}@127.0.0.1:{port}",
        "--set",
        "connection_strategy=lazy",
        "--set",
        "termlog_verbosity=warn",
    ]
    if kind != "json" and path in ("bare", "lean"):
        options += ["--set", "stream_large_bodies=1"]
    return options


def monitor_options(port: int, db: Path) -> list[str]:
    return ["--set", f"monitor_db={db}", "--set", f"monitor_providers={port}:openai"]


def proxy_args(path: str, upstream: int, port: int, db: Path, kind: str) -> list[str]:
    """All proxies alike: lazy connections, no flow lines, warnings only. Without the addon
    a proxy would buffer a stream whole; for SSE it is told to stream (as the addon does),
    or it is no baseline.

    bare: mitmdump; addon: mitmdump -s addons/monitor.py; lean: the lean master without
    the addon (`serve-lean` below); proxy and controls: `llm-monitor proxy`.
    """
    common = proxy_options(path, upstream, port, kind)
    monitor = monitor_options(port, db)
    if path == "bare":
        return [str(BIN / "mitmdump"), *common, "--set", "flow_detail=0"]
    if path == "addon":
        script = ["-s", str(ROOT / "addons" / "monitor.py")]
        return [str(BIN / "mitmdump"), *script, *common, "--set", "flow_detail=0", *monitor]
    if path == "lean":
        return [sys.executable, __file__, "serve-lean", *common]
    if path == "proxy-uvloop":
        return [sys.executable, __file__, "serve-uvloop", *common, *monitor]
    if path == "proxy-metrics":
        monitor += ["--set", f"monitor_metrics_port={free_port()}"]
    return [str(BIN / "llm-monitor"), "proxy", *common, *monitor]


def new_db(workdir: Path, controls: bool = False) -> tuple[Path, str]:
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "bench.db"
    llm_monitor = str(BIN / "llm-monitor")
    subprocess.run([llm_monitor, "--db", str(db), "init"], check=True, capture_output=True)
    out = subprocess.run(
        [
            llm_monitor,
            "--db",
            str(db),
            "orgs",
            "create",
            "Bench",
            "--email",
            "bench@example.com",
            "--json",
        ],
        check=True,
        capture_output=True,
    )
    if controls:  # a hard budget and a rate limit that every request passes through
        for command in (
            ["budgets", "set", "--org", "Bench", "--period", "month", "--usd", "1000000000"],
            ["limits", "set", "--org", "Bench", "--rpm", "1000000000", "--tpm", "1000000000"],
        ):
            subprocess.run([llm_monitor, "--db", str(db), *command], check=True)
    return db, json.loads(out.stdout)["token"]


def count_rows(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("select count(*) from usage").fetchone()[0]


# One measured run.


@dataclass
class Result:
    path: str
    kind: str
    requests: int
    concurrency: int
    seconds: float
    req_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    ttft_p50_ms: float | None
    errors: int
    rss_start_mb: float | None = None
    rss_end_mb: float | None = None
    rss_peak_mb: float | None = None
    # The proxy's CPU time per request: what a core does for one, whatever else the
    # machine runs meanwhile (req/s moves with the neighbours; this much less).
    cpu_us_per_request: float | None = None
    rows: int | None = None
    round: int = 0
    sent: int = 0  # requests sent, warm-up included
    mean_ms: float | None = None  # h2load's, which gives no quantiles


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def measure(
    path: str,
    kind: str,
    port: int,
    requests: int,
    concurrency: int,
    token: str,
    pid: int | None = None,
    warmup: int = 200,
    headers: dict[str, str] | None = None,
) -> Result:
    body = BODIES[kind]
    stagger = 0.0
    if kind == "ttft":
        requests, concurrency, warmup = min(requests, TTFT_REQUESTS), TTFT_CONCURRENCY, 40
        stagger = PACED_STREAM_S / TTFT_CONCURRENCY
    run_harness(
        load(port, warmup, min(concurrency, warmup), body, token, headers=headers, stagger=stagger)
    )
    rss_start = rss_kb(pid) / 1024 if pid else None
    cpu_start = cpu_seconds(pid) if pid else 0.0
    started = time.perf_counter()
    timing = run_harness(
        load(port, requests, concurrency, body, token, headers=headers, stagger=stagger)
    )
    seconds = time.perf_counter() - started
    cpu_used = cpu_seconds(pid) - cpu_start if pid else None
    return Result(
        path=path,
        kind=kind,
        requests=requests,
        concurrency=concurrency,
        seconds=round(seconds, 2),
        req_per_s=round(requests / seconds, 1),
        p50_ms=round(quantile(timing.latency, 0.50), 2),
        p95_ms=round(quantile(timing.latency, 0.95), 2),
        p99_ms=round(quantile(timing.latency, 0.99), 2),
        ttft_p50_ms=round(quantile(timing.ttft, 0.50), 2) if kind != "json" else None,
        errors=timing.errors,
        rss_start_mb=round(rss_start, 1) if rss_start else None,
        rss_end_mb=round(rss_kb(pid) / 1024, 1) if pid else None,
        rss_peak_mb=round(rss_kb(pid, "VmHWM") / 1024, 1) if pid else None,
        sent=requests + warmup,
        cpu_us_per_request=round(cpu_used * 1e6 / requests) if cpu_used is not None else None,
    )


def run_proxy_path(
    path: str,
    kind: str,
    upstream_port: int,
    requests: int,
    concurrency: int,
    workdir: Path,
    round_: int,
) -> Result:
    port = free_port()
    run_dir = workdir / f"{path}-{kind}-{round_}"
    db, token = (
        new_db(run_dir, controls=path == "controls")
        if path in RECORDING_PATHS
        else (workdir / "unused.db", "-")
    )
    args = proxy_args(path, upstream_port, port, db, kind)
    with process(args, port, workdir / f"{run_dir.name}.log", PROXY_CPU) as proc:
        result = measure(path, kind, port, requests, concurrency, token, proc.pid)
    if path in RECORDING_PATHS:
        result.rows = count_rows(db)
    result.round = round_
    return result


def rotated(paths: list[str], round_: int) -> list[str]:
    """The proxies in a different order each round, so that drift on the machine does not
    favour one of them."""
    shift = round_ % len(paths) if paths else 0
    return paths[shift:] + paths[:shift]


def run_paths(
    kinds: list[str],
    paths: list[str],
    requests: int,
    concurrency: int,
    first_event_ms: float,
    rounds: int,
    workdir: Path,
) -> list[Result]:
    """Each round measures every path once, the proxies in a rotated order."""
    results = []
    upstream_port = free_port()
    proxies = [p for p in (*PROXY_PATHS, *OPTIONAL_PATHS) if p in paths]
    with upstream(upstream_port, workdir, first_event_ms=first_event_ms):
        for round_ in range(rounds):
            for kind in kinds:
                if "direct" in paths:
                    result = measure("direct", kind, upstream_port, requests, concurrency, "-")
                    result.round = round_
                    results.append(result)
                for path in rotated(proxies, round_):
                    results.append(
                        run_proxy_path(
                            path, kind, upstream_port, requests, concurrency, workdir, round_
                        )
                    )
    return results


def print_table(results: list[Result]) -> None:
    harness = "uvloop" if harness_loop() is not None else "asyncio (uvloop not installed)"
    click.echo(f"load generator and upstream on {harness}")
    columns = [
        "path",
        "kind",
        "requests",
        "concurrency",
        "req_per_s",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "ttft_p50_ms",
        "errors",
        "rss_start_mb",
        "rss_peak_mb",
        "cpu_us_per_request",
        "rows",
    ]
    echo_table(columns, [{c: getattr(r, c) for c in columns} for r in results])


def echo_table(columns: list[str], rows: list[dict[str, object]]) -> None:
    """Right-aligned columns, an empty cell for None."""
    cells = [["" if row[c] is None else str(row[c]) for c in columns] for row in rows]
    widths = [max(len(x) for x in [c, *(r[i] for r in cells)]) for i, c in enumerate(columns)]
    click.echo("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    for row in cells:
        click.echo("  ".join(x.rjust(w) for x, w in zip(row, widths, strict=True)))


# (numerator, denominator): throughput ratios that say what each layer costs. Each is also
# given from CPU time per request (the denominator's over the numerator's: the throughput
# a core would give), which the machine's other work disturbs far less than req/s.
THROUGHPUT_RATIOS = [
    ("addon", "bare"),  # the addon under mitmdump
    ("lean", "bare"),  # the lean master against mitmdump, neither with the addon
    ("proxy", "lean"),  # the addon under the lean master
    ("proxy", "addon"),  # llm-monitor proxy against mitmdump + addon
    ("proxy-metrics", "proxy"),  # what the Prometheus metrics cost
    ("proxy-uvloop", "proxy"),  # the same on uvloop
    ("controls", "proxy"),  # a hard budget and a rate limit on every request
]


def ratios(results: list[Result]) -> list[dict[str, object]]:
    """Per kind, medians over rounds: throughput ratios between paths, latency and time to
    first token added over direct, rows recorded against requests sent."""
    out = []
    for kind in sorted({r.kind for r in results}):
        rounds = sorted({r.round for r in results if r.kind == kind})
        per_round = [
            {r.path: r for r in results if r.kind == kind and r.round == n} for n in rounds
        ]
        entry: dict[str, object] = {"kind": kind, "rounds": len(rounds)}

        def median(values: list[float]) -> float:
            return round(statistics.median(values), 3)

        def everywhere(*paths: str, per_round: list[dict[str, Result]] = per_round) -> bool:
            return all(all(p in by for p in paths) for by in per_round)

        for top, bottom in THROUGHPUT_RATIOS:
            if everywhere(top, bottom):
                entry[f"{top}_vs_{bottom}_throughput"] = median(
                    [by[top].req_per_s / by[bottom].req_per_s for by in per_round]
                )
                cpu = [
                    by[bottom].cpu_us_per_request / by[top].cpu_us_per_request
                    for by in per_round
                    if by[top].cpu_us_per_request and by[bottom].cpu_us_per_request
                ]
                if cpu:  # not for `direct`, which has no process of its own to read
                    entry[f"{top}_vs_{bottom}_cpu_per_request"] = median(cpu)
        for path in (*PROXY_PATHS, *OPTIONAL_PATHS):
            if everywhere(path, "direct"):
                entry[f"{path}_p50_added_ms"] = median(
                    [by[path].p50_ms - by["direct"].p50_ms for by in per_round]
                )
                if kind != "json":
                    entry[f"{path}_ttft_p50_added_ms"] = median(
                        [by[path].ttft_p50_ms - by["direct"].ttft_p50_ms for by in per_round]
                    )
        for path in RECORDING_PATHS:
            if everywhere(path):
                entry[f"{path}_rows_recorded_vs_sent"] = " ".join(
                    f"{by[path].rows}/{by[path].sent}" for by in per_round
                )
        out.append(entry)
    return out


@click.group(invoke_without_command=True)
@click.option("--requests", default=5000, show_default=True, help="Requests per path and kind.")
@click.option("--concurrency", default=10, show_default=True, help="Keep-alive connections.")
@click.option(
    "--kind",
    "kinds",
    multiple=True,
    type=click.Choice(KINDS),
    help="json and sse: throughput at --concurrency; ttft: time to first token over "
    f"{TTFT_CONCURRENCY} paced streams (default: all three).",
)
@click.option(
    "--only",
    "paths",
    multiple=True,
    type=click.Choice(["direct", *PROXY_PATHS, *OPTIONAL_PATHS]),
    help="Paths to measure (default: all five).",
)
@click.option(
    "--first-event-ms",
    default=20.0,
    show_default=True,
    help="The upstream's delay before a stream's first event.",
)
@click.option(
    "--rounds",
    default=3,
    show_default=True,
    help="Measure each path this many times; ratios are medians over rounds.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default="benchmark.json",
    show_default=True,
    help="Where to write the figures as JSON.",
)
@click.option(
    "--side-rounds",
    default=10,
    show_default=True,
    help="With json, lean and proxy measured: rounds of the two side by side on one core "
    "(as `pair lean proxy`), with each header set; 0 for none.",
)
@prompt_option
@click.pass_context
def main(
    ctx: click.Context,
    requests: int,
    concurrency: int,
    kinds: tuple[str, ...],
    paths: tuple[str, ...],
    first_event_ms: float,
    rounds: int,
    out: str,
    side_rounds: int,
) -> None:
    """Measure the proxy: direct, bare mitmdump, mitmdump with the monitor addon, the lean
    master alone, and `llm-monitor proxy`.

    What the addon costs (proxy / lean) is also measured side by side: rounds run one after
    another meet the host at different speeds, and moved this ratio by a tenth within one
    run here; two processes sharing one core under the same load meet it alike."""
    if ctx.invoked_subcommand is not None:
        return
    pin(os.getpid(), OTHER_CPUS)
    with tempfile.TemporaryDirectory() as tmp:
        results = run_paths(
            list(kinds or KINDS),
            list(paths or ("direct", *PROXY_PATHS)),
            requests,
            concurrency,
            first_event_ms,
            rounds,
            Path(tmp),
        )
    print_table(results)
    summary = ratios(results)
    measured = set(paths or PROXY_PATHS)
    if side_rounds and "json" in (kinds or KINDS) and {"lean", "proxy"} <= measured:
        json_entry = next(entry for entry in summary if entry["kind"] == "json")
        for headers in HEADER_SETS:
            click.echo(f"\nlean and proxy side by side, {headers} headers:")
            per_round = ratio_table(
                ("lean", "proxy"), paired("lean", "proxy", requests, side_rounds, headers)
            )
            json_entry[f"proxy_vs_lean_side_by_side_{headers}_headers"] = round(
                statistics.median(per_round), 3
            )
            json_entry[f"proxy_vs_lean_side_by_side_{headers}_headers_range"] = (
                f"{min(per_round):.3f}-{max(per_round):.3f}"
            )
    click.echo()
    for entry in summary:
        click.echo(json.dumps(entry))
    Path(out).write_text(
        json.dumps(
            {
                "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
                "results": [asdict(r) for r in results],
                "ratios": summary,
            },
            indent=2,
        )
    )
    click.echo(f"\nwritten to {out}")


@main.command("serve-upstream")
@click.option("--port", type=int, required=True)
@click.option("--first-event-ms", default=20.0)
@click.option("--events", default=20)
@click.option("--interval-ms", default=0.0)
@click.option("--sdk-headers", is_flag=True, help="Answer with SDK_RESPONSE_HEADERS too.")
def serve_upstream_command(
    port: int, first_event_ms: float, events: int, interval_ms: float, sdk_headers: bool
) -> None:
    """(internal) Run the fast upstream."""
    run_harness(serve_upstream(port, first_event_ms, events, interval_ms, sdk_headers))


# Peers: other LLM gateways, installed on first use into a cache of their own.

PEERS_CACHE = Path.home() / ".cache" / "llm-monitor-bench"
PORTKEY_VERSION = "1.15.2"
# Portkey's streams need @hono/node-server 1.13.5 (Portkey-AI/gateway#1389).
PORTKEY_PACKAGE = {
    "private": True,
    "dependencies": {"@portkey-ai/gateway": PORTKEY_VERSION, "@hono/node-server": "1.13.5"},
    "overrides": {"@hono/node-server": "1.13.5"},
}
# The gateway's start-server listens on every interface: keep it on 127.0.0.1.
BIND_LOCAL_JS = """import net from "node:net";
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === "number" && typeof args[1] !== "string") args.splice(1, 0, "127.0.0.1");
  else if (args[0] && typeof args[0] === "object" && !args[0].host)
    args[0] = { ...args[0], host: "127.0.0.1" };
  return listen.apply(this, args);
};
"""
LITELLM_CONFIG = """model_list:
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: http://127.0.0.1:{upstream}/v1
      api_key: sk-bench
litellm_settings:
  telemetry: false
"""


@dataclass
class Peer:
    name: str
    args: list[str]  # {port} and {upstream} are filled in
    env: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)  # {upstream} is filled in
    version: str = ""


def install(command: list[str], log: Path, cwd: Path | None = None) -> bool:
    with log.open("ab") as out:
        return subprocess.run(command, stdout=out, stderr=out, cwd=cwd).returncode == 0


def litellm_peer(cache: Path, workdir: Path) -> Peer | str:
    """LiteLLM's proxy in a venv of its own, one worker, its price map read locally."""
    venv_dir = cache / "litellm-venv"
    binary = venv_dir / "bin" / "litellm"
    log = cache / "litellm-install.log"
    if not binary.exists() and not (
        install([sys.executable, "-m", "venv", str(venv_dir)], log)
        and install([str(venv_dir / "bin" / "pip"), "install", "-q", "litellm[proxy]"], log)
    ):
        return f"could not install litellm[proxy] (see {log})"
    version = subprocess.run(
        [
            str(venv_dir / "bin" / "python"),
            "-c",
            "import importlib.metadata as m;print(m.version('litellm'))",
        ],
        capture_output=True,
        text=True,
    ).stdout.strip()
    config = workdir / "litellm.yaml"
    return Peer(
        name="litellm",
        args=[
            str(binary),
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            "{port}",
            "--num_workers",
            "1",
        ],
        env={
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            # No master key: the benchmark sends no LiteLLM key, as to the other proxies.
            "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
        },
        version=version,
    )


def portkey_peer(cache: Path, workdir: Path) -> Peer | str:
    """The Portkey gateway (npm), headless, bound to 127.0.0.1, routed to the upstream by
    its custom-host header."""
    node = shutil.which("node")
    npm = shutil.which("npm")
    if node is None or npm is None:
        return "node and npm are not installed (apt-get install nodejs npm)"
    home = cache / "portkey"
    server = home / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
    log = cache / "portkey-install.log"
    if not server.exists():
        home.mkdir(parents=True, exist_ok=True)
        (home / "package.json").write_text(json.dumps(PORTKEY_PACKAGE, indent=2))
        if not install([npm, "install", "--no-audit", "--no-fund"], log, cwd=home):
            return f"could not install @portkey-ai/gateway (see {log})"
    bind_local = workdir / "bind-local.mjs"
    bind_local.write_text(BIND_LOCAL_JS)
    return Peer(
        name="portkey",
        args=[node, "--import", bind_local.as_uri(), str(server), "--port={port}", "--headless"],
        env={"TRUSTED_CUSTOM_HOSTS": "127.0.0.1", "NODE_ENV": "production"},
        headers={
            "x-portkey-provider": "openai",
            "x-portkey-custom-host": "http://127.0.0.1:{upstream}/v1",
        },
        version=PORTKEY_VERSION,
    )


def run_peer(
    peer: Peer,
    kind: str,
    upstream_port: int,
    requests: int,
    concurrency: int,
    workdir: Path,
    round_: int,
) -> Result:
    port = free_port()
    args = [a.format(port=port, upstream=upstream_port) for a in peer.args]
    headers = {k: v.format(upstream=upstream_port) for k, v in peer.headers.items()}
    log = workdir / f"{peer.name}-{kind}-{round_}.log"
    with process(args, port, log, PROXY_CPU, env=peer.env, ready_timeout=120) as proc:
        result = measure(
            peer.name, kind, port, requests, concurrency, "-", proc.pid, headers=headers
        )
    result.round = round_
    return result


def peers_table(results: list[Result]) -> list[dict[str, object]]:
    """One row per system and kind, medians over rounds, and each system's throughput as a
    ratio of Portkey's and LiteLLM's."""
    rows = []
    for kind in sorted({r.kind for r in results}):
        by_path: dict[str, list[Result]] = {}
        for r in results:
            if r.kind == kind:
                by_path.setdefault(r.path, []).append(r)

        def med(path: str, attr: str, by_path: dict[str, list[Result]] = by_path) -> float | None:
            values = [getattr(r, attr) for r in by_path.get(path, [])]
            values = [v for v in values if v is not None]
            return round(statistics.median(values), 2) if values else None

        direct_ttft = med("direct", "ttft_p50_ms")
        for path in by_path:
            row: dict[str, object] = {
                "system": path,
                "kind": kind,
                "req_per_s": med(path, "req_per_s"),
                "p50_ms": med(path, "p50_ms"),
                "p99_ms": med(path, "p99_ms"),
                "ttft_added_ms": (
                    round(med(path, "ttft_p50_ms") - direct_ttft, 2)
                    if kind != "json" and direct_ttft is not None and path != "direct"
                    else None
                ),
                "peak_rss_mb": med(path, "rss_peak_mb"),
                "cpu_us_per_request": med(path, "cpu_us_per_request"),
                "errors": sum(r.errors for r in by_path[path]),
            }
            for peer in ("portkey", "litellm"):
                theirs = med(peer, "req_per_s")
                row[f"x_{peer}"] = round(row["req_per_s"] / theirs, 2) if theirs else None
            rows.append(row)
    return rows


@main.command("peers")
@click.option("--requests", default=3000, show_default=True, help="Requests per system and kind.")
@click.option("--concurrency", default=10, show_default=True, help="Keep-alive connections.")
@click.option("--rounds", default=3, show_default=True, help="Medians over this many rounds.")
@click.option(
    "--kind", "kinds", multiple=True, type=click.Choice(KINDS), help="Default: all three."
)
@click.option("--first-event-ms", default=20.0, show_default=True)
@click.option(
    "--out", type=click.Path(dir_okay=False), default="benchmark-peers.json", show_default=True
)
def peers_command(
    requests: int,
    concurrency: int,
    rounds: int,
    kinds: tuple[str, ...],
    first_event_ms: float,
    out: str,
) -> None:
    """LLM Monitor next to other gateways: direct, bare mitmdump, mitmdump + addon,
    `llm-monitor proxy`, the Portkey gateway and LiteLLM's proxy (one worker), each pinned
    to one core, in a rotated order each round. Peers are installed on first use into
    ~/.cache/llm-monitor-bench; one that cannot be installed is named and left out."""
    pin(os.getpid(), OTHER_CPUS)
    PEERS_CACHE.mkdir(parents=True, exist_ok=True)
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        peers = []
        for make in (portkey_peer, litellm_peer):
            found = make(PEERS_CACHE, workdir)
            if isinstance(found, str):
                click.echo(f"left out: {found}", err=True)
            else:
                click.echo(f"{found.name} {found.version}", err=True)
                peers.append(found)
        upstream_port = free_port()
        (workdir / "litellm.yaml").write_text(LITELLM_CONFIG.format(upstream=upstream_port))
        systems: list[str | Peer] = ["bare", "addon", "proxy", *peers]
        with upstream(upstream_port, workdir, first_event_ms=first_event_ms):
            for round_ in range(rounds):
                for kind in kinds or KINDS:
                    result = measure("direct", kind, upstream_port, requests, concurrency, "-")
                    result.round = round_
                    results.append(result)
                    for system in rotated(systems, round_):
                        if isinstance(system, Peer):
                            result = run_peer(
                                system, kind, upstream_port, requests, concurrency, workdir, round_
                            )
                        else:
                            result = run_proxy_path(
                                system, kind, upstream_port, requests, concurrency, workdir, round_
                            )
                        click.echo(
                            f"round {round_} {kind} {result.path}: {result.req_per_s} req/s",
                            err=True,
                        )
                        results.append(result)
    table = peers_table(results)
    echo_table(list(table[0]), table)
    Path(out).write_text(
        json.dumps(
            {
                "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "peers": {p.name: p.version for p in peers},
                "table": table,
                "results": [asdict(r) for r in results],
            },
            indent=2,
        )
    )
    click.echo(f"\nwritten to {out}")


@main.command("serve-lean")
@click.option("--mode", "modes", multiple=True)
@click.option("--set", "settings", multiple=True)
def serve_lean_command(modes: tuple[str, ...], settings: tuple[str, ...]) -> None:
    """(internal) The lean master of `llm-monitor proxy` without the monitor addon: the
    proxy's own launcher, every step of it (heap settled, type check left out, signals)."""
    from llm_monitor.proxy import master

    sys.exit(asyncio.run(master.serve(modes, settings, with_monitor=False)))


@main.command("serve-uvloop")
@click.option("--mode", "modes", multiple=True)
@click.option("--set", "settings", multiple=True)
def serve_uvloop_command(modes: tuple[str, ...], settings: tuple[str, ...]) -> None:
    """(internal) `llm-monitor proxy` on uvloop, mitmproxy's eager task factory left out."""
    import uvloop
    from mitmproxy.utils import asyncio_utils

    from llm_monitor.proxy import master

    asyncio_utils.set_eager_task_factory = contextlib.nullcontext
    sys.exit(uvloop.run(master.serve(modes, settings)))


# What the addon costs, part by part (`cost`).

COUNTED_HOOKS = ("requestheaders", "request", "responseheaders", "response")


def thread_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds so far of a process's main thread (the event loop) and of all its other
    threads together (the recorder's, the token index's, ...)."""
    main = others = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            seconds = cpu_seconds_of(task / "stat")
            if task.name == str(pid):
                main += seconds
            else:
                others += seconds
    return main, others


def count_in_process(counters: Path, addon: type | None) -> None:
    """Count in this process the garbage collector's time and, given the addon's class,
    the CPU time of each of its flow hooks (each timed by a wrapper, about 0.3 µs of its
    own); SIGUSR1 appends the totals to `counters` as a JSON line."""
    import gc

    totals = dict.fromkeys(("gc", *(COUNTED_HOOKS if addon else ())), 0.0)
    started = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            totals["gc"] += time.perf_counter() - started[0]

    def timed(name: str, hook: Any) -> Any:
        def run(self: object, flow: object) -> Any:
            began = time.thread_time()
            try:
                return hook(self, flow)
            finally:
                totals[name] += time.thread_time() - began

        return run

    gc.callbacks.append(on_gc)
    for name in COUNTED_HOOKS if addon else ():
        setattr(addon, name, timed(name, getattr(addon, name)))

    def write(*_: object) -> None:
        with counters.open("a") as out:
            out.write(json.dumps(totals) + "\n")

    signal.signal(signal.SIGUSR1, write)


@main.command("serve-counted")
@click.option("--path", type=click.Choice(["lean", "proxy"]), required=True)
@click.option("--counters", type=click.Path(path_type=Path), required=True)
@click.option("--mode", "modes", multiple=True)
@click.option("--set", "settings", multiple=True)
@click.pass_context
def serve_counted_command(
    ctx: click.Context, path: str, counters: Path, modes: tuple[str, ...], settings: tuple[str, ...]
) -> None:
    """(internal) The lean master or `llm-monitor proxy`, counting (see `cost`)."""
    from llm_monitor.proxy import master

    count_in_process(counters, master.Monitor if path == "proxy" else None)
    if path == "lean":
        ctx.invoke(serve_lean_command, modes=modes, settings=settings)
    else:
        sys.exit(master.run(modes, settings))


def read_counters(counters: Path, pid: int) -> dict[str, float]:
    """The counters `serve-counted` has now, written on SIGUSR1."""
    lines = len(counters.read_text().splitlines()) if counters.exists() else 0
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if counters.exists() and len(found := counters.read_text().splitlines()) > lines:
            return json.loads(found[-1])
        time.sleep(0.02)
    raise RuntimeError(f"no counters from {pid}")


@main.command("cost")
@click.option("--requests", default=4000, show_default=True, help="Requests per round and path.")
@click.option("--rounds", default=4, show_default=True, help="Medians over this many rounds.")
@headers_option
@prompt_option
def cost_command(requests: int, rounds: int, headers: str) -> None:
    """What the addon costs, part by part: the lean master and `llm-monitor proxy` take
    turns under the JSON load, each pinned to one core. Per request, in µs: CPU time of
    the event loop's thread and of the other threads (the recorder's), the garbage
    collector's time, and the CPU time of each of the addon's flow hooks."""
    columns = ["cpu", "event_loop", "other_threads", "gc", *COUNTED_HOOKS]
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="llm-monitor-cost-") as tmp:
        workdir = Path(tmp)
        upstream_port = free_port()
        extra = sdk_request_headers(headers)
        with upstream(upstream_port, workdir, sdk_headers=extra is not None, first_event_ms=20.0):
            for round_ in range(rounds):
                for path in rotated(["lean", "proxy"], round_):
                    rows.append(cost_round(path, round_, requests, upstream_port, workdir, extra))
    echo_table(["path", "round", "req_per_s", *columns], rows)
    lean, proxy = (median_row([r for r in rows if r["path"] == p]) for p in ("lean", "proxy"))
    # What the addon adds: the difference of the medians; its hooks are all its own.
    addon: dict[str, object] = {"path": "proxy - lean", "req_per_s": None}
    for column in columns:
        mine, base = proxy[column], lean[column]
        addon[column] = round(mine - (base or 0), 1) if isinstance(mine, float) else None
    click.echo("\nmedians over rounds, µs a request:")
    echo_table(["path", "req_per_s", *columns], [lean, proxy, addon])
    click.echo(
        f"\nproxy / lean: {proxy['req_per_s'] / lean['req_per_s']:.3f} by throughput, "
        f"{lean['cpu'] / proxy['cpu']:.3f} by CPU time per request"
    )


def median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Each column's median over rounds (None where it was not measured)."""
    out: dict[str, Any] = {"path": rows[0]["path"]}
    for column in rows[0]:
        if column not in ("path", "round"):
            values = [r[column] for r in rows if r[column] is not None]
            out[column] = round(statistics.median(values), 1) if values else None
    return out


def cost_round(
    path: str,
    round_: int,
    requests: int,
    upstream_port: int,
    workdir: Path,
    extra: dict[str, str] | None = None,
) -> dict[str, object]:
    port = free_port()
    run_dir = workdir / f"{path}-{round_}"
    db, token = new_db(run_dir) if path == "proxy" else (workdir / "unused.db", "-")
    counters = run_dir / "counters.jsonl"
    run_dir.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, __file__, "serve-counted", "--path", path, "--counters", str(counters)]
    args += proxy_options(path, upstream_port, port, "json")
    if path == "proxy":
        args += monitor_options(port, db)
    with process(args, port, workdir / f"{run_dir.name}.log", PROXY_CPU) as proc:
        run_harness(load(port, 300, 10, BODIES["json"], token, headers=extra))
        counted = read_counters(counters, proc.pid)
        threads = thread_cpu(proc.pid)
        started = time.perf_counter()
        run_harness(load(port, requests, 10, BODIES["json"], token, headers=extra))
        seconds = time.perf_counter() - started
        threads_after = thread_cpu(proc.pid)
        counted_after = read_counters(counters, proc.pid)

    def per_request(seconds_used: float) -> float:
        return round(seconds_used * 1e6 / requests, 1)

    main, others = (after - before for after, before in zip(threads_after, threads, strict=True))
    row: dict[str, object] = {
        "path": path,
        "round": round_,
        "req_per_s": round(requests / seconds, 1),
        "cpu": per_request(main + others),
        "event_loop": per_request(main),
        "other_threads": per_request(others),
    }
    for name in ("gc", *COUNTED_HOOKS):
        row[name] = per_request(counted_after[name] - counted[name]) if name in counted else None
    return row


def side_by_side(
    sides: list[tuple[str, list[str], dict[str, str], str]],
    workdir: Path,
    requests: int,
    rounds: int,
    headers: str = "minimal",
    stream: str = "no",
) -> list[list[float]]:
    """Run every side (label, command line, environment, monitor token) at once, pinned
    to the same core, under the same load at once; per round, the CPU time a request
    of each, in µs. Rounds run one after the other take the machine at different speeds
    (by up to half here): a 1% difference is lost among them. Side by side, a change in
    the machine's speed reaches every side alike. `headers` "sdk": requests and answers
    carry an SDK's and the provider's headers (`SDK_REQUEST_HEADERS`). `stream`: the
    requests are streams (`streamed`), their events back to back."""
    extra = sdk_request_headers(headers)
    body = streamed(BODIES["json"], stream)
    upstream_port = free_port()
    with contextlib.ExitStack() as running:
        running.enter_context(
            upstream(
                upstream_port,
                workdir,
                sdk_headers=extra is not None,
                first_event_ms=20.0 if stream == "no" else 0.0,
            )
        )
        started = []  # (pid, port, token)
        for label, args, env, token in sides:
            port = free_port()
            command = [
                a.replace("{upstream}", str(upstream_port)).replace("{port}", str(port))
                for a in args
            ]
            log = workdir / f"{label}.log"
            proc = running.enter_context(process(command, port, log, PROXY_CPU, env))
            started.append((proc.pid, port, token))

        async def all_sides(count: int) -> list[Timing]:
            return await asyncio.gather(
                *(load(port, count, 10, body, token, headers=extra) for _, port, token in started)
            )

        run_harness(all_sides(500))
        used_per_round = []
        for _ in range(rounds):
            before = [cpu_seconds(pid) for pid, _, _ in started]
            run_harness(all_sides(requests))
            used_per_round.append(
                [
                    (cpu_seconds(pid) - start) * 1e6 / requests
                    for (pid, _, _), start in zip(started, before, strict=True)
                ]
            )
    return used_per_round


def side_args(path: str, db: Path, stream: str = "no") -> list[str]:
    """`proxy_args` with the ports left for `side_by_side` to fill in (for a stream load,
    as for the sse kind: a proxy without the addon told to stream)."""
    args = proxy_args(path, 0, 0, db, "json" if stream == "no" else "sse")
    return [
        a.replace("127.0.0.1:0@127.0.0.1:0", "127.0.0.1:{upstream}@127.0.0.1:{port}").replace(
            "monitor_providers=0:", "monitor_providers={port}:"
        )
        for a in args
    ]


def ratio_table(labels: tuple[str, str], used_per_round: list[list[float]]) -> list[float]:
    """The per-round table of two sides; returns each round's first / second."""
    rows = [
        {
            "round": round_,
            f"{labels[0]} µs": round(first),
            f"{labels[1]} µs": round(second),
            "ratio": round(first / second, 3),
        }
        for round_, (first, second) in enumerate(used_per_round)
    ]
    echo_table(["round", f"{labels[0]} µs", f"{labels[1]} µs", "ratio"], rows)
    return [float(r["ratio"]) for r in rows]  # type: ignore[arg-type]


@main.command("compare")
@click.option("--base", default="HEAD", show_default=True, help="The git revision to compare with.")
@click.option(
    "--path",
    type=click.Choice(["proxy", "lean"]),
    default="proxy",
    show_default=True,
    help="What runs: `llm-monitor proxy`, or the lean master without the addon.",
)
@click.option("--requests", default=3000, show_default=True, help="Requests per round and side.")
@click.option("--rounds", default=10, show_default=True, help="The ratio is a median over rounds.")
@headers_option
@prompt_option
@stream_option
def compare_command(
    base: str, path: str, requests: int, rounds: int, headers: str, stream: str
) -> None:
    """A change measured: the working tree against `--base`, both running at once, pinned
    to the same core, under the same load (JSON, or streams with `--stream`). Per round,
    the CPU time a request of each.

    Ten rounds of the same code against itself gave 1.000 (0.98 to 1.06), and a change
    measured at 1.4% gave 1.009 and 1.014 in two runs."""
    with tempfile.TemporaryDirectory(prefix="llm-monitor-compare-") as tmp:
        workdir = Path(tmp)
        exported = workdir / "base"
        exported.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", base, "addons"], capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(exported)], input=archive, check=True)
        sides = []
        for side, tree in enumerate((exported, ROOT)):
            side_dir = workdir / f"side-{side}"
            db, token = new_db(side_dir) if path == "proxy" else (side_dir / "unused.db", "-")
            # PYTHONPATH comes before the editable install: each side runs its own tree.
            env = {"PYTHONPATH": str(tree / "addons")}
            sides.append((f"side-{side}", side_args(path, db, stream), env, token))
        used = side_by_side(sides, workdir, requests, rounds, headers, stream)
    ratios = ratio_table((base, "working tree"), used)
    click.echo(
        f"\n{base} / working tree, CPU time a request of `{path}`: "
        f"{statistics.median(ratios):.3f} (median of {rounds} rounds; "
        f"{min(ratios):.3f} to {max(ratios):.3f}). Above 1: the working tree costs less."
    )


@main.command("pair")
@click.argument("first", type=click.Choice([*PROXY_PATHS, *OPTIONAL_PATHS]))
@click.argument("second", type=click.Choice([*PROXY_PATHS, *OPTIONAL_PATHS]))
@click.option("--requests", default=3000, show_default=True, help="Requests per round and side.")
@click.option("--rounds", default=10, show_default=True, help="The ratio is a median over rounds.")
@headers_option
@prompt_option
@stream_option
def pair_command(
    first: str, second: str, requests: int, rounds: int, headers: str, stream: str
) -> None:
    """Two paths measured side by side, as `compare` does: e.g. `pair proxy proxy-metrics`
    (what metrics cost), `pair lean proxy` (what the addon costs), `pair proxy controls`.
    Prints, per round and as a median, the CPU time a request of FIRST over SECOND's:
    SECOND's throughput per core as a share of FIRST's."""
    used = paired(first, second, requests, rounds, headers, stream)
    ratios = ratio_table((first, second), used)
    click.echo(
        f"\n`{second}` keeps {statistics.median(ratios):.3f} of `{first}`'s throughput per "
        f"core (CPU time a request, {first} / {second}; median of {rounds} rounds, "
        f"{min(ratios):.3f} to {max(ratios):.3f})."
    )


def paired(
    first: str,
    second: str,
    requests: int,
    rounds: int,
    headers: str = "minimal",
    stream: str = "no",
) -> list[list[float]]:
    """`side_by_side` for two of the paths: per round, the CPU time a request of each."""
    with tempfile.TemporaryDirectory(prefix="llm-monitor-pair-") as tmp:
        workdir = Path(tmp)
        sides = []
        for side, path in enumerate((first, second)):
            side_dir = workdir / f"{side}-{path}"
            if path in RECORDING_PATHS:
                db, token = new_db(side_dir, controls=path == "controls")
            else:
                side_dir.mkdir(parents=True)
                db, token = side_dir / "unused.db", "-"
            sides.append((f"{side}-{path}", side_args(path, db, stream), {}, token))
        return side_by_side(sides, workdir, requests, rounds, headers, stream)


@main.command("workers")
@click.option("--requests", default=8000, show_default=True)
@click.option("--concurrency", default=20, show_default=True)
@click.option("--max-workers", default=2, show_default=True)
@click.option("--rounds", default=5, show_default=True, help="Ratios are medians over rounds.")
@click.option(
    "--harness",
    type=click.Choice(["auto", "compiled", "python"]),
    default="auto",
    show_default=True,
    help="compiled: h2load and a static HAProxy upstream (auto, when both are installed); "
    "python: this script's load generator and upstream.",
)
def workers_command(
    requests: int, concurrency: int, max_workers: int, rounds: int, harness: str
) -> None:
    """`llm-monitor up --workers N` for N = 1 .. max: JSON throughput through HAProxy,
    the worker counts taking turns each round.

    The workers share the machine's cores with whatever loads them, so the load generator
    and the upstream should cost as little as a client and a provider on other machines
    would: h2load (Debian's nghttp2-client) and HAProxy answering from memory take about
    10 µs of CPU a request between them, this script's asyncio pair about 110."""
    compiled = compiled_harness()
    if harness == "compiled" and compiled is None:
        raise click.ClickException("--harness compiled needs h2load (nghttp2-client) and haproxy")
    use_compiled = compiled is not None and harness != "python"
    click.echo(
        "load generator h2load, upstream HAProxy answering from memory"
        if use_compiled
        else "load generator and upstream: this script's, on "
        + ("uvloop" if harness_loop() is not None else "asyncio")
        + ("" if harness == "python" else " (h2load or haproxy not installed)")
    )
    counts = list(range(1, max_workers + 1))
    rates: dict[int, list[float]] = {n: [] for n in counts}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        upstream_port = free_port()
        serve = static_upstream if use_compiled else upstream
        with serve(upstream_port, workdir, cpus={0, 1}):
            for round_number in range(rounds):
                for n in (
                    counts[round_number % len(counts) :] + counts[: round_number % len(counts)]
                ):
                    result = measure_workers(
                        n,
                        upstream_port,
                        workdir / f"r{round_number}w{n}",
                        requests,
                        concurrency,
                        compiled[0] if use_compiled and compiled else None,
                    )
                    rates[n].append(result.req_per_s)
                    latency = (
                        f"mean {result.mean_ms} ms"
                        if result.mean_ms is not None
                        else f"p50 {result.p50_ms} ms, p99 {result.p99_ms} ms"
                    )
                    click.echo(
                        f"round {round_number + 1}, workers={n}: {result.req_per_s} req/s, "
                        f"{result.errors} errors, {latency}, rows {result.rows}/{result.sent}"
                    )
    for n in counts:
        ratios = [rate / base for rate, base in zip(rates[n], rates[1], strict=True)]
        click.echo(
            f"workers={n}: median {statistics.median(rates[n]):.0f} req/s, "
            f"x{statistics.median(ratios):.2f} one worker, the median of the rounds' "
            f"ratios ({', '.join(f'{r:.2f}' for r in ratios)})"
        )


def compiled_harness() -> tuple[str, str] | None:
    """h2load and haproxy, when both are installed."""
    h2load = shutil.which("h2load")
    haproxy = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
    return (h2load, haproxy) if h2load and haproxy else None


@contextlib.contextmanager
def static_upstream(
    port: int, workdir: Path, cpus: set[int] = OTHER_CPUS
) -> Iterator[subprocess.Popen]:
    """HAProxy answering every request with the upstream's JSON reply, from memory: a
    provider that costs the machine almost nothing. It reads each request's body first
    (`http-buffer-request`), or it would close the connection after every answer."""
    compiled = compiled_harness()
    assert compiled is not None
    reply = workdir / "reply.json"
    reply.write_bytes(JSON_REPLY)
    config = workdir / "upstream-haproxy.cfg"
    config.write_text(
        "global\n    nbthread 1\n"
        "defaults\n    mode http\n    option http-buffer-request\n"
        "    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n"
        f"frontend upstream\n    bind 127.0.0.1:{port}\n"
        "    http-request return status 200 content-type application/json "
        f"hdr x-request-id req_b file {reply}\n"
    )
    with process(
        [compiled[1], "-db", "-f", str(config)], port, workdir / "upstream.log", cpus
    ) as proc:
        yield proc


def h2load_json(
    h2load: str, port: int, requests: int, concurrency: int, token: str, workdir: Path
) -> Result:
    """`requests` chat completions over `concurrency` keep-alive HTTP/1.1 connections with
    h2load. It reports the mean of latency, not quantiles (`mean_ms`; p50 and p99 are
    left at 0)."""
    body = workdir / "body.json"
    body.write_bytes(CHAT_BODY)
    out = subprocess.run(
        [
            h2load,
            "--h1",
            "-n",
            str(requests),
            "-c",
            str(concurrency),
            "-d",
            str(body),
            "-H",
            "content-type: application/json",
            "-H",
            "authorization: Bearer sk-bench",
            "-H",
            f"x-monitor-token: {token}",
            f"http://127.0.0.1:{port}/v1/chat/completions",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    latency = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", out)
    finished = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", out)
    succeeded = re.search(r"status codes: (\d+) 2xx", out)
    if finished is None or succeeded is None or latency is None:
        raise click.ClickException(f"h2load said:\n{out}")
    seconds = float(finished[1]) / (1000 if finished[2] == "ms" else 1)
    return Result(
        path="h2load",
        kind="json",
        requests=requests,
        concurrency=concurrency,
        seconds=round(seconds, 2),
        req_per_s=float(finished[3]),
        p50_ms=0.0,
        p95_ms=0.0,
        p99_ms=0.0,
        ttft_p50_ms=None,
        errors=requests - int(succeeded[1]),
        sent=requests,
        mean_ms=round(float(latency[1]) * {"us": 0.001, "ms": 1, "s": 1000}[latency[2]], 2),
    )


def measure_workers(
    n: int,
    upstream_port: int,
    workdir: Path,
    requests: int,
    concurrency: int,
    h2load: str | None = None,
) -> Result:
    """One run of `up --workers n` in front of the upstream, loaded by h2load when given,
    else by this script; its rows counted after."""
    db, token = new_db(workdir)
    port = free_port()
    args = [
        str(BIN / "llm-monitor"),
        "--db",
        str(db),
        "up",
        "--no-defaults",
        "--workers",
        str(n),
        "--listen",
        f"openai=http://127.0.0.1:{upstream_port}@{port}",
        "--no-log-requests",
    ]
    with process(args, port, workdir / "up.log", {0, 1}):
        time.sleep(1 + n)  # every worker up, not only HAProxy's port
        if h2load is None:
            result = measure(f"workers={n}", "json", port, requests, concurrency, token)
        else:
            warmup = h2load_json(h2load, port, 500, concurrency, token, workdir)
            result = h2load_json(h2load, port, requests, concurrency, token, workdir)
            result.sent += warmup.sent
            result.errors += warmup.errors
    result.path = f"workers={n}"
    time.sleep(1)
    result.rows = count_rows(db)
    return result


@main.command("soak")
@click.option("--streams", default=200, show_default=True, help="Concurrent streams.")
@click.option("--seconds", default=30.0, show_default=True, help="Length of each stream.")
@click.option("--interval-ms", default=50.0, show_default=True, help="Between events.")
def soak_command(streams: int, seconds: float, interval_ms: float) -> None:
    """Many long streams at once through one proxy, bare mitmdump and `llm-monitor proxy`:
    memory, time to first token, and every row."""
    events = int(seconds * 1000 / interval_ms)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        upstream_port = free_port()
        with upstream(upstream_port, workdir, events=events, interval_ms=interval_ms):
            for path in ("bare", "proxy"):
                db, token = new_db(workdir / path) if path == "proxy" else (workdir / "x", "-")
                port = free_port()
                args = proxy_args(path, upstream_port, port, db, "sse")
                with process(args, port, workdir / f"{path}.log", PROXY_CPU) as proc:
                    # One short request first: the port opens before the addon has finished
                    # starting, and that wait is not what is measured here.
                    run_harness(load(port, 1, 1, CHAT_BODY, token))
                    rss_before = rss_kb(proc.pid) / 1024
                    started = time.perf_counter()
                    timing = run_harness(load(port, streams, streams, STREAM_BODY, token))
                    took = time.perf_counter() - started
                    rss_peak = rss_kb(proc.pid, "VmHWM") / 1024
                click.echo(
                    f"{path}: {streams} streams x {events} events every {interval_ms:.0f} ms in "
                    f"{took:.1f} s, {timing.errors} errors; time to first token p50 "
                    f"{quantile(timing.ttft, 0.5):.1f} ms, p99 {quantile(timing.ttft, 0.99):.1f} ms"
                    f"; RSS {rss_before:.1f} MB before, {rss_peak:.1f} MB peak"
                )
                if path == "proxy":
                    with sqlite3.connect(db) as conn:
                        rows = conn.execute(
                            "select count(*), sum(outcome = 'ok'), "
                            "sum(input_tokens = 9 and output_tokens = 3), sum(priced = 1) "
                            "from usage"
                        ).fetchone()
                    click.echo(
                        f"proxy rows: {rows[0]} for {streams} streams + 1 warm-up; ok {rows[1]}, "
                        f"exact tokens {rows[2]}, priced {rows[3]}"
                    )


@main.command("recorder")
@click.option("--rows", default=100_000, show_default=True)
def recorder_command(rows: int) -> None:
    """The recorder alone: rows per second priced and written into SQLite."""
    from llm_monitor.store.recorder import Recorder
    from llm_monitor.usage import UsageRecord, utc_timestamp

    with tempfile.TemporaryDirectory() as tmp:
        db, _ = new_db(Path(tmp))
        now = time.time()
        records = [
            UsageRecord.model_construct(
                ts=utc_timestamp(now + i / 1000),
                org_id=1,
                token_id=1,
                provider="openai",
                method="POST",
                path="/v1/chat/completions",
                model="gpt-4o",
                response_model="gpt-4o-2024-08-06",
                status=200,
                outcome="ok",
                streamed=i % 3 == 0,
                usage_injected=False,
                billable=True,
                input_tokens=100 + i % 900,
                cached_input_tokens=(i % 5) * 10,
                cache_write_tokens=None,
                cache_write_1h_tokens=None,
                output_tokens=20 + i % 300,
                reasoning_tokens=0,
                total_tokens=None,
                latency_ms=12.3,
                ttft_ms=None,
                request_id=f"req_{i}",
                user=None,
                tags=None,
                error=None,
                raw_usage=None,
            )
            for i in range(rows)
        ]
        recorder = Recorder(db)
        recorder.start()
        started = time.perf_counter()
        for record in records:
            recorder.submit(record)
        recorder.close(timeout=600)
        seconds = time.perf_counter() - started
        written = count_rows(db)
    click.echo(
        f"recorder: {rows} rows in {seconds:.2f} s = {rows / seconds:,.0f} rows/s "
        f"({written} written)"
    )


if __name__ == "__main__":
    main()
