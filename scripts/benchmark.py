"""What the proxy costs: the same load direct, through bare mitmdump, and through the addon.

    .venv/bin/python scripts/benchmark.py                      # JSON and SSE, all three paths
    .venv/bin/python scripts/benchmark.py --requests 100000 --only addon --kind json   # memory
    .venv/bin/python scripts/benchmark.py --soak                # 200 streams x 30 s
    .venv/bin/python scripts/benchmark.py --recorder            # the recorder alone

Everything runs on 127.0.0.1: a fast OpenAI-shaped upstream (its own process), mitmdump
(its own process), and a keep-alive load generator (this process, asyncio). Prints a table
and writes the figures as JSON (--out).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
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


def sse_event(content: str | None, usage: bool = False) -> bytes:
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
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def serve_upstream(port: int, first_event_ms: float, events: int, interval_ms: float) -> None:
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
                if b'"stream": true' in body or b'"stream":true' in body:
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                        b"x-request-id: req_b\r\ntransfer-encoding: chunked\r\n\r\n"
                    )
                    await writer.drain()
                    await asyncio.sleep(first_event_ms / 1000)
                    for i in range(events):
                        if i:
                            await asyncio.sleep(interval_ms / 1000)
                        writer.write(chunk(sse_event("tok")))
                        await writer.drain()
                    writer.write(
                        chunk(sse_event(None, usage=True) + b"data: [DONE]\n\n") + b"0\r\n\r\n"
                    )
                else:
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                        b"x-request-id: req_b\r\ncontent-length: %d\r\n\r\n%s"
                        % (len(JSON_REPLY), JSON_REPLY)
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
) -> Timing:
    request = (
        f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nauthorization: Bearer sk-bench\r\n"
        f"x-monitor-token: {token}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body
    timing = Timing()
    remaining = [requests]

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**20)
        try:
            while remaining[0] > 0:
                remaining[0] -= 1
                await one_request(reader, writer, request, timing)
        finally:
            writer.close()

    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), timeout)
    return timing


# Processes.


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


def pin(pid: int, cpus: set[int]) -> None:
    """Keep the proxy on its own core, away from the load generator and the upstream, so
    that what is measured is the proxy and not who got the CPU (2 cores here)."""
    if len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(pid, cpus)


PROXY_CPU = {1}
OTHER_CPUS = {0}


@contextlib.contextmanager
def process(
    args: list[str], port: int, log: Path, cpus: set[int] = OTHER_CPUS
) -> Iterator[subprocess.Popen]:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    pin(proc.pid, cpus)
    try:
        wait_for_port(port)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def upstream(
    port: int, workdir: Path, cpus: set[int] = OTHER_CPUS, **options: float
) -> contextlib.AbstractContextManager[subprocess.Popen]:
    """The fast upstream (`serve-upstream`) in a process of its own."""
    args = [sys.executable, __file__, "serve-upstream", "--port", str(port)]
    for name, value in options.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    return process(args, port, workdir / "upstream.log", cpus)


def mitmdump_args(upstream: int, port: int, addon: bool, db: Path, kind: str) -> list[str]:
    """Both mitmdumps alike: lazy connections, no flow lines. Bare mitmdump would buffer a
    stream whole; for SSE it is told to stream (as the addon does), or it is no baseline."""
    args = [
        str(BIN / "mitmdump"),
        "--mode",
        f"reverse:http://127.0.0.1:{upstream}@127.0.0.1:{port}",
        "--set",
        "connection_strategy=lazy",
        "--set",
        "flow_detail=0",
        "--set",
        "termlog_verbosity=warn",
    ]
    if kind == "sse" and not addon:
        args += ["--set", "stream_large_bodies=1"]
    if addon:
        args += [
            "-s",
            str(ROOT / "addons" / "monitor.py"),
            "--set",
            f"monitor_db={db}",
            "--set",
            f"monitor_providers={port}:openai",
        ]
    return args


def new_db(workdir: Path) -> tuple[Path, str]:
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
    rows: int | None = None
    round: int = 0


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
) -> Result:
    body = STREAM_BODY if kind == "sse" else CHAT_BODY
    asyncio.run(load(port, warmup, min(concurrency, warmup), body, token))
    rss_start = rss_kb(pid) / 1024 if pid else None
    started = time.perf_counter()
    timing = asyncio.run(load(port, requests, concurrency, body, token))
    seconds = time.perf_counter() - started
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
        ttft_p50_ms=round(quantile(timing.ttft, 0.50), 2) if kind == "sse" else None,
        errors=timing.errors,
        rss_start_mb=round(rss_start, 1) if rss_start else None,
        rss_end_mb=round(rss_kb(pid) / 1024, 1) if pid else None,
        rss_peak_mb=round(rss_kb(pid, "VmHWM") / 1024, 1) if pid else None,
    )


def run_paths(
    kinds: list[str],
    paths: list[str],
    requests: int,
    concurrency: int,
    first_event_ms: float,
    rounds: int,
    workdir: Path,
) -> list[Result]:
    """Each round measures every path once; bare and addon swap order from round to round,
    so that drift on the machine does not favour one of them."""
    results = []
    upstream_port = free_port()
    with upstream(upstream_port, workdir, first_event_ms=first_event_ms):
        for round_ in range(rounds):
            for kind in kinds:
                if "direct" in paths:
                    result = measure("direct", kind, upstream_port, requests, concurrency, "-")
                    result.round = round_
                    results.append(result)
                order = ("bare", "addon") if round_ % 2 == 0 else ("addon", "bare")
                for path in (p for p in order if p in paths):
                    port = free_port()
                    run_dir = workdir / f"{path}-{kind}-{round_}"
                    db, token = new_db(run_dir) if path == "addon" else (None, "-")
                    args = mitmdump_args(
                        upstream_port, port, path == "addon", db or workdir / "unused.db", kind
                    )
                    with process(args, port, workdir / f"{run_dir.name}.log", PROXY_CPU) as proc:
                        result = measure(path, kind, port, requests, concurrency, token, proc.pid)
                    if db is not None:
                        result.rows = count_rows(db)
                    result.round = round_
                    results.append(result)
    return results


def print_table(results: list[Result]) -> None:
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
        "rows",
    ]
    rows = [[getattr(r, c) if getattr(r, c) is not None else "" for c in columns] for r in results]
    widths = [
        max(len(str(x)) for x in [c, *(row[i] for row in rows)]) for i, c in enumerate(columns)
    ]
    click.echo("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    for row in rows:
        click.echo("  ".join(str(x).rjust(w) for x, w in zip(row, widths, strict=True)))


def ratios(results: list[Result]) -> list[dict[str, object]]:
    """Per kind, the median over rounds of: the addon against bare mitmdump, and both
    against direct."""
    out = []
    for kind in sorted({r.kind for r in results}):
        rounds = sorted({r.round for r in results if r.kind == kind})
        per_round = [
            {r.path: r for r in results if r.kind == kind and r.round == n} for n in rounds
        ]
        entry: dict[str, object] = {"kind": kind, "rounds": len(rounds)}

        def median(values: list[float]) -> float:
            return round(statistics.median(values), 3)

        if all("bare" in by and "addon" in by for by in per_round):
            entry["addon_throughput_vs_bare"] = median(
                [by["addon"].req_per_s / by["bare"].req_per_s for by in per_round]
            )
            entry["addon_p50_added_vs_bare_ms"] = median(
                [by["addon"].p50_ms - by["bare"].p50_ms for by in per_round]
            )
            if kind == "sse":
                entry["addon_ttft_p50_added_vs_bare_ms"] = median(
                    [by["addon"].ttft_p50_ms - by["bare"].ttft_p50_ms for by in per_round]
                )
            entry["rows_recorded_vs_sent"] = " ".join(
                f"{by['addon'].rows}/{by['addon'].requests + 200}" for by in per_round
            )
        if all("direct" in by for by in per_round):
            for path in ("bare", "addon"):
                if all(path in by for by in per_round):
                    entry[f"{path}_p50_added_vs_direct_ms"] = median(
                        [by[path].p50_ms - by["direct"].p50_ms for by in per_round]
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
    type=click.Choice(["json", "sse"]),
    help="Response kinds (default: both).",
)
@click.option(
    "--only",
    "paths",
    multiple=True,
    type=click.Choice(["direct", "bare", "addon"]),
    help="Paths to measure (default: all three).",
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
) -> None:
    """Measure the proxy: direct vs bare mitmdump vs mitmdump with the monitor addon."""
    if ctx.invoked_subcommand is not None:
        return
    pin(os.getpid(), OTHER_CPUS)
    with tempfile.TemporaryDirectory() as tmp:
        results = run_paths(
            list(kinds or ("json", "sse")),
            list(paths or ("direct", "bare", "addon")),
            requests,
            concurrency,
            first_event_ms,
            rounds,
            Path(tmp),
        )
    print_table(results)
    summary = ratios(results)
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
def serve_upstream_command(
    port: int, first_event_ms: float, events: int, interval_ms: float
) -> None:
    """(internal) Run the fast upstream."""
    asyncio.run(serve_upstream(port, first_event_ms, events, interval_ms))


@main.command("workers")
@click.option("--requests", default=5000, show_default=True)
@click.option("--concurrency", default=20, show_default=True)
@click.option("--max-workers", default=2, show_default=True)
def workers_command(requests: int, concurrency: int, max_workers: int) -> None:
    """`llm-monitor up --workers N` for N = 1 .. max: JSON throughput through HAProxy."""
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        upstream_port = free_port()
        with upstream(upstream_port, workdir, cpus={0, 1}):
            for n in range(1, max_workers + 1):
                db, token = new_db(workdir / f"w{n}")
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
                with process(args, port, workdir / f"up-{n}.log", {0, 1}):
                    time.sleep(1 + n)  # every worker up, not only HAProxy's port
                    result = measure(f"workers={n}", "json", port, requests, concurrency, token)
                time.sleep(1)
                result.rows = count_rows(db)
                click.echo(
                    f"workers={n}: {result.req_per_s} req/s, {result.errors} errors, "
                    f"p50 {result.p50_ms} ms, "
                    f"p99 {result.p99_ms} ms, rows {result.rows}/{requests + 200}"
                )


@main.command("soak")
@click.option("--streams", default=200, show_default=True, help="Concurrent streams.")
@click.option("--seconds", default=30.0, show_default=True, help="Length of each stream.")
@click.option("--interval-ms", default=50.0, show_default=True, help="Between events.")
def soak_command(streams: int, seconds: float, interval_ms: float) -> None:
    """Many long streams at once through one proxy, bare and with the addon: memory, time
    to first token, and every row."""
    events = int(seconds * 1000 / interval_ms)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        upstream_port = free_port()
        with upstream(upstream_port, workdir, events=events, interval_ms=interval_ms):
            for path in ("bare", "addon"):
                db, token = new_db(workdir / path) if path == "addon" else (workdir / "x", "-")
                port = free_port()
                args = mitmdump_args(upstream_port, port, path == "addon", db, "sse")
                with process(args, port, workdir / f"{path}.log", PROXY_CPU) as proc:
                    # One short request first: the port opens before the addon has finished
                    # starting, and that wait is not what is measured here.
                    asyncio.run(load(port, 1, 1, CHAT_BODY, token))
                    rss_before = rss_kb(proc.pid) / 1024
                    started = time.perf_counter()
                    timing = asyncio.run(load(port, streams, streams, STREAM_BODY, token))
                    took = time.perf_counter() - started
                    rss_peak = rss_kb(proc.pid, "VmHWM") / 1024
                click.echo(
                    f"{path}: {streams} streams x {events} events every {interval_ms:.0f} ms in "
                    f"{took:.1f} s, {timing.errors} errors; time to first token p50 "
                    f"{quantile(timing.ttft, 0.5):.1f} ms, p99 {quantile(timing.ttft, 0.99):.1f} ms"
                    f"; RSS {rss_before:.1f} MB before, {rss_peak:.1f} MB peak"
                )
                if path == "addon":
                    with sqlite3.connect(db) as conn:
                        rows = conn.execute(
                            "select count(*), sum(outcome = 'ok'), "
                            "sum(input_tokens = 9 and output_tokens = 3), sum(priced = 1) "
                            "from usage"
                        ).fetchone()
                    click.echo(
                        f"addon rows: {rows[0]} for {streams} streams + 1 warm-up; ok {rows[1]}, "
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
