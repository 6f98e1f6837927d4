"""Where the proxy's time goes, function by function: the lean master and `llm-monitor
proxy` side by side on one core under the same JSON load, profiled with Linux `perf`.

    .venv/bin/python scripts/profile_proxy.py                  # top 30, 8,000 requests
    .venv/bin/python scripts/profile_proxy.py --prompt-kb 10 --top 50

Python 3.12 and later name each Python function to perf (`PYTHONPERFSUPPORT=1`: a small
trampoline per function). perf records the native stack of each sample with DWARF
unwinding, which stops at the first Python function: each sample is credited to the
innermost Python function and the native code it was running under it (the C of a dict
update, SQLite, orjson, the garbage collector), i.e. self time with the C it calls,
measured in CPU time (a thread waiting for the interpreter lock takes no samples).

Figures are µs a request: a function's share of the samples times the CPU time a request
took while profiled. perf's own work runs in the profiled process and is spread over every
row alike, so the figures are higher than `benchmark.py cost`'s; compare the rows and the
two columns, not the totals with other commands. The two run at once, as `benchmark.py
pair` runs them: profiled one after the other, they met the host at speeds a third apart
here. A difference of a few µs in one function is still noise; the grouped totals and the
large rows are what this tells.

Needs `perf` (Debian: `apt install linux-perf`) and a kernel that lets a user profile
their own processes (`kernel.perf_event_paranoid` at most 2).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import benchmark  # the script beside this one (run as a script, its folder is on sys.path)
import click

# Where a function's file is, shortened: ours from the package, libraries from
# site-packages, the standard library from its own folder.
SHORT_PATH = re.compile(r".*/(?:addons/(?=llm_monitor/)|site-packages/|lib/python3\.\d+/)")


@dataclass
class Profile:
    """One path's samples under the load, by thread and by innermost function."""

    path: str
    requests: int
    cpu_us: float  # CPU time a request, all threads, while profiled
    samples: int = 0
    event_loop: int = 0  # samples of the process's main thread
    by_function: collections.Counter[str] = field(default_factory=collections.Counter)

    def us(self, samples: int) -> float:
        return self.cpu_us * samples / self.samples if self.samples else 0.0


def function_name(frame: str) -> str:
    """`py::Monitor._record:/…/addons/llm_monitor/proxy/addon.py` as `Monitor._record
    (llm_monitor/proxy/addon.py)`; a native frame as `[native] symbol`."""
    if not frame.startswith("py::"):
        return f"[native] {frame}"
    name, _, path = frame[4:].partition(":")
    return f"{name} ({SHORT_PATH.sub('', path, count=1)})"


def area(name: str) -> str:
    """Which part of the program a function is in."""
    if name.startswith("[native]"):
        return "native only (no Python frame)"
    where = name.rsplit("(", 1)[1]
    if where.startswith("llm_monitor/proxy/master.py"):
        return "the lean master's hook dispatch (HookIndex)"
    if where.startswith("llm_monitor/"):
        return "LLM Monitor's addon, recorder and pricing"
    if where.startswith("mitmproxy/"):
        return "mitmproxy"
    if where.startswith(("asyncio/", "selectors.py")):
        return "asyncio"
    return "other Python (stdlib, h11, ...)"


def samples_of(script: str) -> Iterator[tuple[int, int, list[str]]]:
    """(process id, thread id, frames innermost first) of each sample of
    `perf script -F pid,tid,ip,sym` (a `pid/tid` line, then a frame a line)."""
    head, frames = "", []
    for line in [*script.splitlines(), ""]:
        if not line.strip():
            if head:
                pid, _, tid = head.partition("/")
                yield int(pid), int(tid), frames
            head, frames = "", []
        elif head:
            parts = line.split(None, 1)
            frames.append(parts[1] if len(parts) > 1 else "[unknown]")
        else:
            head = line.split()[-1]


def read_profiles(profiles: dict[int, Profile], script: str) -> None:
    """Credit each sample of `perf script -F pid,tid,ip,sym` to its process's profile."""
    for pid, tid, frames in samples_of(script):
        profile = profiles[pid]
        innermost = next((f for f in frames if f.startswith("py::")), None)
        profile.by_function[function_name(innermost or (frames[0] if frames else "?"))] += 1
        profile.samples += 1
        profile.event_loop += tid == pid


def perf_usable() -> str | None:
    """Why perf cannot profile here, or None when it can."""
    if shutil.which("perf") is None:
        return "perf not found (Debian: apt install linux-perf)"
    probe = subprocess.run(
        ["perf", "record", "-o", os.devnull, "-q", "--", "true"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        return f"perf cannot record here: {probe.stderr.strip()[:300]}"
    return None


def profile_side_by_side(
    requests: int, body: bytes, frequency: int, workdir: Path
) -> tuple[Profile, Profile]:
    """The lean master and `llm-monitor proxy` pinned to the same core and loaded at once
    (as `benchmark.py pair`: a change in the host's speed, which moves sequential runs by
    a third here, meets both alike), one perf session recording both while each serves
    `requests` JSON requests."""
    db, token = benchmark.new_db(workdir)
    upstream_port = benchmark.free_port()
    env = {"PYTHONPERFSUPPORT": "1"}
    with contextlib.ExitStack() as running:
        running.enter_context(benchmark.upstream(upstream_port, workdir, first_event_ms=20.0))
        started: dict[str, tuple[int, int]] = {}  # path: (pid, port)
        for path in ("lean", "proxy"):
            port = benchmark.free_port()
            args = [
                a.replace("{upstream}", str(upstream_port)).replace("{port}", str(port))
                for a in benchmark.side_args(path, db)
            ]
            log = workdir / f"{path}.log"
            proc = running.enter_context(
                benchmark.process(args, port, log, benchmark.PROXY_CPU, env)
            )
            started[path] = (proc.pid, port)

        async def both(count: int) -> None:
            await asyncio.gather(
                *(benchmark.load(port, count, 10, body, token) for _, port in started.values())
            )

        benchmark.run_harness(both(1000))
        data = workdir / "perf.data"
        pids = ",".join(str(pid) for pid, _ in started.values())
        record = ["perf", "record", "-q", "-F", str(frequency), "--call-graph", "dwarf,16384"]
        perf = subprocess.Popen(
            [*record, "-p", pids, "-o", str(data)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # attached; an idle process takes no samples meanwhile
        before = {path: benchmark.cpu_seconds(pid) for path, (pid, _) in started.items()}
        benchmark.run_harness(both(requests))
        used = {
            path: benchmark.cpu_seconds(pid) - before[path] for path, (pid, _) in started.items()
        }
        perf.send_signal(signal.SIGINT)
        perf.wait(60)
    script = subprocess.run(
        ["perf", "script", "-i", str(data), "-F", "pid,tid,ip,sym"],
        capture_output=True,
        text=True,
        errors="replace",
        check=True,
    ).stdout
    profiles = {
        pid: Profile(path, requests, used[path] * 1e6 / requests)
        for path, (pid, _) in started.items()
    }
    read_profiles(profiles, script)
    return profiles[started["lean"][0]], profiles[started["proxy"][0]]


def tables(lean: Profile, proxy: Profile, top: int) -> None:
    def row(label: str, lean_samples: int, proxy_samples: int) -> dict[str, object]:
        mine, base = proxy.us(proxy_samples), lean.us(lean_samples)
        return {
            "": label,
            "lean": round(base, 1),
            "proxy": round(mine, 1),
            "proxy - lean": round(mine - base, 1),
        }

    columns = ["", "lean", "proxy", "proxy - lean"]
    click.echo(f"\nµs a request while profiled ({lean.requests} requests each):")
    benchmark.echo_table(
        columns,
        [
            row("all threads", lean.samples, proxy.samples),
            row("event loop", lean.event_loop, proxy.event_loop),
            row("other threads", lean.samples - lean.event_loop, proxy.samples - proxy.event_loop),
        ],
    )
    areas: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for index, profile in enumerate((lean, proxy)):
        for name, count in profile.by_function.items():
            areas[area(name)][index] += count
    click.echo("\nby part of the program:")
    benchmark.echo_table(
        columns,
        [row(name, *counts) for name, counts in sorted(areas.items(), key=lambda x: -x[1][1])],
    )
    names = set(lean.by_function) | set(proxy.by_function)
    by_difference = sorted(
        names,
        key=lambda n: proxy.us(proxy.by_function[n]) - lean.us(lean.by_function[n]),
        reverse=True,
    )
    click.echo(f"\nthe {top} functions with the most time added in the proxy (self, with C):")
    benchmark.echo_table(
        columns,
        [row(n, lean.by_function[n], proxy.by_function[n]) for n in by_difference[:top]],
    )
    click.echo(f"\nthe {top} functions the proxy spends most time in:")
    heaviest = [n for n, _ in proxy.by_function.most_common(top)]
    benchmark.echo_table(
        columns, [row(n, lean.by_function[n], proxy.by_function[n]) for n in heaviest]
    )


@click.command()
@click.option("--requests", default=8000, show_default=True, help="Requests profiled per path.")
@click.option("--top", default=30, show_default=True, help="Functions listed in each table.")
@click.option("--frequency", default=999, show_default=True, help="perf samples a CPU second.")
@benchmark.prompt_option
def main(requests: int, top: int, frequency: int) -> None:
    """Profile the lean master and `llm-monitor proxy` side by side on one core under the
    JSON load, with perf, and print µs a request by part of the program and by function."""
    if (why := perf_usable()) is not None:
        raise click.ClickException(why)
    benchmark.pin(os.getpid(), benchmark.OTHER_CPUS)
    body = benchmark.BODIES["json"]  # a conversation with --prompt-kb (its callback sets it)
    with tempfile.TemporaryDirectory(prefix="llm-monitor-profile-") as tmp:
        lean, proxy = profile_side_by_side(requests, body, frequency, Path(tmp))
    tables(lean, proxy, top)


if __name__ == "__main__":
    main()
