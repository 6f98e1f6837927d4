"""`llm-monitor proxy`: mitmproxy's proxy core with only the addons a reverse proxy for
LLM APIs needs, and ours.

`mitmdump` loads about 35 addons (anticache, playback, map-local, export, save, ...) and
mitmproxy calls every one of them for every event of every flow; none of them does
anything for a reverse proxy in front of an LLM API, and together they cost a large part
of mitmdump's throughput. This master loads:

- `Core`: validates options and keeps mitmproxy's built-in commands;
- `Proxyserver`, `NextLayer`, `TlsConfig`, `DnsResolver`: listening, the protocol stack,
  TLS to the upstream (certificate checks included), name resolution;
- `Block`: `block_global` (connections from public addresses refused unless allowed) and
  `block_private`;
- `UpdateAltSvc`: reverse mode's rewriting of the upstream's `Alt-Svc` to the listener;
- `DisableH2C`: h2c upgrade requests are cleaned, HTTP/2 prior-knowledge flows killed;
- `ErrorCheck`: a start-up error (a busy port) ends the process with status 1;
- `TermLog`: log lines on standard output, as mitmdump prints them;
- `Monitor`: this project's addon.

Hooks are dispatched by `HookIndex`: mitmproxy's addon manager, calling each event's hook
only on the addons that have one (mitmproxy's walks every addon twice per event of a
flow, which took most of the lean master's time per request).

`mitmdump -s addons/monitor.py ...` keeps working, for anyone who wants mitmproxy's
full set.

Before the listeners open, the price library's index is built and the heap is frozen
(`settle_heap`): a full garbage collection would otherwise walk every object made at
start-up (mitmproxy, pydantic, the price data) while requests wait, about 80 ms on this
project's machine, once every few seconds under load. It is frozen once more when the
addon's start-up work is done (`settle_once_started`): the recorder builds its price book
(about 20,000 objects) on its own thread, and the full collections that still come every
second or two under load (flows caught in flight by younger ones) walked it each time.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import signal
import sys
from collections.abc import Callable, Sequence

from mitmproxy import addonmanager, exceptions, flow, hooks, http, master, options
from mitmproxy.addons import (
    block,
    core,
    disable_h2c,
    dns_resolver,
    errorcheck,
    next_layer,
    proxyserver,
    termlog,
    tlsconfig,
    update_alt_svc,
)

from llm_monitor.money.library import library_index
from llm_monitor.proxy.addon import Monitor


def lean_addons() -> list[object]:
    """mitmproxy's addons that a reverse proxy for LLM APIs uses (see the docstring)."""
    return [
        core.Core(),
        block.Block(),
        proxyserver.Proxyserver(),
        dns_resolver.DnsResolver(),
        next_layer.NextLayer(),
        tlsconfig.TlsConfig(),
        update_alt_svc.UpdateAltSvc(),
        disable_h2c.DisableH2C(),
        errorcheck.ErrorCheck(),
    ]


class HookIndex(addonmanager.AddonManager):
    """mitmproxy's addon manager, calling each event's hook only on the addons that have
    one. mitmproxy's own walks every addon for every event, then walks them all again for
    an `update` event after each event of a flow: with the lean addons, most of the time
    the proxy spent on a request went there (`scripts/benchmark.py`), though none of them
    has an `update` hook and each of a flow's hooks is had by one or two of them.

    The order, `safecall` (an addon's exception is logged, not raised) and `AddonHalt`
    (stops the event) are mitmproxy's, `safecall` entered only once a hook has raised;
    the index is rebuilt when addons come or go.
    """

    def __init__(self, proxy: master.Master) -> None:
        super().__init__(proxy)
        self._handlers: dict[str, list[Callable]] = {}

    def handlers(self, name: str) -> list[Callable]:
        """The hooks called `name`, in the order mitmproxy calls them."""
        found = self._handlers.get(name)
        if found is None:
            found = self._handlers[name] = [
                func
                for addon in addonmanager.traverse(self.chain)
                if callable(func := getattr(addon, name, None))
            ]
        return found

    def register(self, addon: object) -> object:
        """As mitmproxy's; also how an addon that manages others adds its children."""
        registered = super().register(addon)
        self._handlers.clear()
        return registered

    def add(self, *addons: object) -> None:
        super().add(*addons)
        self._handlers.clear()

    def remove(self, addon: object) -> None:
        super().remove(addon)
        self._handlers.clear()

    def clear(self) -> None:
        super().clear()
        self._handlers.clear()

    async def handle_lifecycle(self, event: hooks.Hook) -> None:
        args = event.args()
        await self.trigger_event(event, args)
        if isinstance(args[0], flow.Flow) and self.handlers("update"):
            await self.trigger_event(hooks.UpdateHook([args[0]]))

    async def trigger_event(self, event: hooks.Hook, args: list | None = None) -> None:
        handlers = self.handlers(event.name)
        if not handlers:
            return
        if args is None:
            args = event.args()
        for func in handlers:
            try:
                result = func(*args)
                if result is not None and inspect.isawaitable(result):
                    await result
            except exceptions.AddonHalt:
                return
            except Exception:
                # mitmproxy's `safecall` logs it (OptionsError goes on up), entered only
                # here: a generator context manager around every call cost about 1 µs.
                with addonmanager.safecall():
                    raise


class LeanMaster(master.Master):
    """A Master with `lean_addons()` and the monitor addon (unless `with_monitor` is
    False, as the benchmark measures it), dispatching through `HookIndex`; no flow is
    kept or dumped."""

    def __init__(
        self, opts: options.Options, *, with_termlog: bool = True, with_monitor: bool = True
    ) -> None:
        super().__init__(opts, with_termlog=False)
        opts.changed.disconnect(self.addons._configure_all)
        self.addons = HookIndex(self)
        if with_termlog:
            self._termlog_addon = termlog.TermLog()
            self.addons.add(self._termlog_addon)
        self.addons.add(*lean_addons(), *([Monitor()] if with_monitor else []))


def _unchecked(message: http.MessageData) -> None:
    """In place of `MessageData.__post_init__`: no type check (see below)."""


def skip_message_type_checks() -> None:
    """Build mitmproxy's requests and responses without its development type check.

    Unless Python runs with -O, `MessageData.__post_init__` checks the type of every field
    of every Request and Response mitmproxy builds, through `typing` and `dataclasses`
    (`typecheck.check_option_type`): the largest single item of the lean master's profile
    (`scripts/profile_proxy.py`). The values checked are those mitmproxy's own HTTP parser
    and this project's code made. Only this check goes: mitmproxy's assertions, which guard
    its protocol state machines, stay. Called by `serve`, for the process it runs (tests
    that build messages in process keep the check)."""
    http.MessageData.__post_init__ = _unchecked  # type: ignore[method-assign]


def configure_logging() -> None:
    """As mitmdump does: every record reaches mitmproxy's handlers, which filter by
    `termlog_verbosity`; chatty libraries only from warnings up."""
    logging.getLogger().setLevel(logging.DEBUG)
    for name in ("asyncio", "hpack", "quic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def settle_heap() -> None:
    """Collect what start-up left behind, then move every object left out of the garbage
    collector's generations (`gc.freeze`): they live as long as the process, and a full
    collection need not walk them again and again."""
    gc.collect()
    gc.freeze()


async def settle_once_started(proxy: master.Master, timeout: float = 10.0) -> None:
    """`settle_heap` again when the monitor addon has done its start-up work (at most
    `timeout` seconds after the proxy starts): what it built lives as long as the process.
    The first requests may be in flight then; the few objects of theirs frozen with the
    rest are a one-off."""
    monitor = proxy.addons.get("monitor")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while monitor is not None and not monitor.started() and loop.time() < deadline:
        await asyncio.sleep(0.02)
    settle_heap()


HUP_IGNORED = "llm-monitor: SIGHUP ignored: rolling restarts are `up --workers 2` (or more)'s"


async def serve(modes: Sequence[str], settings: Sequence[str], *, with_monitor: bool = True) -> int:
    """Run until SIGINT or SIGTERM. `settings` are `--set` values (`NAME=VALUE`); an
    unknown option or a bad value is refused before anything listens. `with_monitor`
    False: the same launcher without the monitor addon (the benchmark's lean master)."""
    configure_logging()
    skip_message_type_checks()
    opts = options.Options()
    proxy = LeanMaster(opts, with_monitor=with_monitor)
    try:
        opts.set(*settings)
        if modes:
            opts.update(mode=list(modes))
        # Every addon sees every option once, as mitmdump shows a script (the monitor
        # addon turns `connection_strategy` lazy there, so a refused request never opens
        # a connection to the provider).
        proxy.addons.trigger(hooks.ConfigureHook(set(opts.keys())))
    except exceptions.OptionsError as e:
        print(f"llm-monitor proxy: {e}", file=sys.stderr)
        return 2
    if with_monitor:
        library_index()  # shared by the recorder and the gate: built before any request waits
    settle_heap()
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task] = []

    def stop() -> None:
        """The first SIGTERM or SIGINT drains, a second one stops at once."""
        if stopping:
            proxy.shutdown()
        else:
            stopping.append(loop.create_task(drain_then_stop(proxy)))

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop)
    # A restart is `up --workers N`'s to make (one worker at a time); here SIGHUP would
    # otherwise end the process without draining.
    loop.add_signal_handler(signal.SIGHUP, lambda: print(HUP_IGNORED, file=sys.stderr))
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # a client gone mid-write is no reason to exit
    settling = loop.create_task(settle_once_started(proxy))
    await proxy.run()
    settling.cancel()
    return 0


async def drain_then_stop(proxy: LeanMaster) -> None:
    """Stop accepting, let what is in flight finish (`monitor_drain_seconds`), then shut
    down as before: the addon records what is left as `proxy_shutdown`."""
    monitor = proxy.addons.get("monitor")
    try:
        if monitor is not None:
            await monitor.drain(proxy.options.monitor_drain_seconds)
    finally:
        proxy.shutdown()


def run(modes: Sequence[str], settings: Sequence[str]) -> int:
    return asyncio.run(serve(modes, settings))
