"""`llm-monitor proxy`'s master: the addons it loads and how it calls their hooks."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from mitmproxy import exceptions, options
from mitmproxy.proxy.layers.http import HttpRequestHook, HttpResponseHook
from mitmproxy.test import tflow

from llm_monitor.proxy.master import LeanMaster
from tests.proxy import free_port


class Calls:
    """An addon that notes each hook it sees, in a list shared with others."""

    def __init__(self, name: str, seen: list[str], fail: bool = False, halt: bool = False):
        self.name, self.seen, self.fail, self.halt = name, seen, fail, halt

    def request(self, flow: object) -> None:
        self.seen.append(f"{self.name}.request")
        if self.fail:
            raise RuntimeError(f"{self.name} failed")
        if self.halt:
            raise exceptions.AddonHalt()

    async def response(self, flow: object) -> None:
        await asyncio.sleep(0)
        self.seen.append(f"{self.name}.response")


class Updates(Calls):
    def update(self, flows: list[object]) -> None:
        self.seen.append(f"{self.name}.update")


def master_with(*addons: object) -> LeanMaster:
    proxy = LeanMaster(options.Options(), with_termlog=False, with_monitor=False)
    proxy.addons.add(*addons)
    return proxy


@pytest.fixture
def event_loop_master():
    """LeanMaster wants a running loop when it is made, as mitmproxy's Master does."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield loop
    loop.close()
    asyncio.set_event_loop(None)


def test_hooks_run_in_chain_order_async_ones_awaited(event_loop_master) -> None:
    seen: list[str] = []
    flow = tflow.tflow(resp=True)

    async def run() -> None:
        proxy = master_with(Calls("a", seen), Calls("b", seen))
        await proxy.addons.handle_lifecycle(HttpRequestHook(flow))
        await proxy.addons.handle_lifecycle(HttpResponseHook(flow))

    event_loop_master.run_until_complete(run())
    assert seen == ["a.request", "b.request", "a.response", "b.response"]


def test_a_failing_hook_is_logged_and_the_next_addon_still_runs(
    event_loop_master, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []

    async def run() -> None:
        proxy = master_with(Calls("a", seen, fail=True), Calls("b", seen))
        await proxy.addons.handle_lifecycle(HttpRequestHook(tflow.tflow()))

    with caplog.at_level(logging.ERROR):
        event_loop_master.run_until_complete(run())
    assert seen == ["a.request", "b.request"]
    assert "Addon error: a failed" in caplog.text


def test_addon_halt_stops_the_event_there(event_loop_master) -> None:
    seen: list[str] = []

    async def run() -> None:
        proxy = master_with(Calls("a", seen, halt=True), Calls("b", seen))
        await proxy.addons.handle_lifecycle(HttpRequestHook(tflow.tflow()))

    event_loop_master.run_until_complete(run())
    assert seen == ["a.request"]


def test_addons_added_or_removed_later_are_called_or_not(event_loop_master) -> None:
    seen: list[str] = []
    late = Calls("late", seen)

    async def run() -> None:
        proxy = master_with(Calls("a", seen))
        await proxy.addons.handle_lifecycle(HttpRequestHook(tflow.tflow()))
        proxy.addons.add(late)
        await proxy.addons.handle_lifecycle(HttpRequestHook(tflow.tflow()))
        proxy.addons.remove(late)
        await proxy.addons.handle_lifecycle(HttpRequestHook(tflow.tflow()))

    event_loop_master.run_until_complete(run())
    assert seen == ["a.request", "a.request", "late.request", "a.request"]


def test_update_follows_each_flow_event_only_when_an_addon_has_the_hook(
    event_loop_master,
) -> None:
    seen: list[str] = []

    async def run() -> None:
        proxy = master_with(Calls("a", seen))
        await proxy.addons.handle_lifecycle(HttpRequestHook(tflow.tflow()))
        proxy.addons.add(Updates("u", seen))
        await proxy.addons.handle_lifecycle(HttpRequestHook(tflow.tflow()))

    event_loop_master.run_until_complete(run())
    assert seen == ["a.request", "a.request", "u.request", "u.update"]


def test_the_lean_master_loads_the_monitor_last_and_no_flow_keeping_addon(
    event_loop_master,
) -> None:
    async def run() -> list[str]:
        proxy = LeanMaster(options.Options())
        return [type(addon).__name__ for addon in proxy.addons.chain]

    chain = event_loop_master.run_until_complete(run())
    assert chain[0] == "TermLog" and chain[-1] == "Monitor"
    assert {"Core", "Proxyserver", "NextLayer", "TlsConfig", "Block", "UpdateAltSvc"} <= set(chain)
    assert not {"Save", "View", "ClientPlayback", "ServerPlayback", "Dumper"} & set(chain)


def test_children_an_addon_registers_later_are_called(event_loop_master) -> None:
    """As mitmproxy's script loader does: the parent lists a child in its `addons` and
    registers it."""
    seen: list[str] = []

    class Parent:
        def __init__(self) -> None:
            self.addons: list[object] = []

    parent = Parent()

    async def run() -> None:
        proxy = master_with(parent)
        await proxy.addons.handle_lifecycle(HttpRequestHook(tflow.tflow()))
        child = Calls("child", seen)
        parent.addons.append(child)
        proxy.addons.register(child)
        await proxy.addons.handle_lifecycle(HttpRequestHook(tflow.tflow()))

    event_loop_master.run_until_complete(run())
    assert seen == ["child.request"]


def serving(script: str, db: Path) -> subprocess.CompletedProcess[str]:
    """Run `script` (ending with SERVE_WITH_CHECK) in a process of its own, with a reverse
    mode on free ports and `db` as its arguments: its `check()` ends with SIGTERM."""
    mode = f"reverse:http://127.0.0.1:{free_port()}@127.0.0.1:{free_port()}"
    return subprocess.run(
        [sys.executable, "-c", script, mode, str(db)],
        capture_output=True,
        text=True,
        timeout=60,
    )


# The end of each script `serving` runs: `master.serve` with the script's `check()` beside it.
SERVE_WITH_CHECK = """
async def main():
    asyncio.get_running_loop().create_task(check())
    await master.serve([sys.argv[1]], [f"monitor_db={sys.argv[2]}", "termlog_verbosity=warn"])


asyncio.run(main())
"""

SETTLED_HEAP_CHECK = (
    """
import asyncio, gc, os, signal, sys
from llm_monitor.money.prices import PriceEntry
from llm_monitor.proxy import master

made = []


def walked(kind):
    return sum(isinstance(o, kind) for o in gc.get_objects())  # the frozen ones are not


class Noted(master.LeanMaster):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        made.append(self)


master.LeanMaster = Noted


async def check():
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while not (made and made[0].addons.get("monitor").started()):
        assert loop.time() < deadline, "the monitor addon never started"
        await asyncio.sleep(0.05)
    recorder = made[0].addons.get("monitor").recorder
    assert recorder.warmed.is_set()
    settle = loop.time() + 5  # the master settles its heap once the addon has started
    while (left := walked(PriceEntry)) and loop.time() < settle:
        await asyncio.sleep(0.1)
    print("price entries the collector still walks:", left, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)

"""
    + SERVE_WITH_CHECK
)


def test_what_the_addon_builds_at_start_is_frozen_out_of_full_collections(fresh_db) -> None:
    """The recorder builds its price book (about 20,000 objects) on its thread after the
    heap was first frozen; every full collection under load (one every second or two)
    walked it, 6-13 ms each instead of 2-6 ms, until the master froze it too."""
    done = serving(SETTLED_HEAP_CHECK, fresh_db)
    assert "price entries the collector still walks: 0" in done.stdout, done.stdout + done.stderr
    assert done.returncode == 0, done.stderr


TYPE_CHECK_PROBE = (
    """
import asyncio, os, signal, sys
from mitmproxy import http
from llm_monitor.proxy import master


def type_checked():
    try:  # a timestamp that is no number: mitmproxy's development check refuses it
        http.Request("h", 80, b"GET", b"http", b"", b"/", b"HTTP/1.1", http.Headers(), b"",
                     None, "no number", None)
    except TypeError:
        return True
    return False


print("checked before serve:", type_checked(), flush=True)


async def check():
    print("checked while serving:", type_checked(), flush=True)
    port = int(sys.argv[1].rsplit(":", 1)[1])
    for _ in range(400):  # SIGTERM once it listens: its handler is installed by then
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
        else:
            writer.close()
            break
    os.kill(os.getpid(), signal.SIGTERM)

"""
    + SERVE_WITH_CHECK
)


def test_the_proxy_builds_messages_without_mitmproxys_development_type_check(fresh_db) -> None:
    """`MessageData.__post_init__` type-checks every field of every request and response
    unless Python runs with -O: the largest single item of the lean master's profile.
    `llm-monitor proxy` leaves it out for its own process; code that builds messages in
    process elsewhere (these tests) keeps it."""
    done = serving(TYPE_CHECK_PROBE, fresh_db)
    assert "checked before serve: True" in done.stdout, done.stdout + done.stderr
    assert "checked while serving: False" in done.stdout, done.stdout + done.stderr
    assert done.returncode == 0, done.stderr
