"""The proxy's side of spend controls: a decision per request from memory, and a
background thread that keeps that memory current.

Per request (`Gate.admit`, on the event loop): the hard budgets and rate limits the
request falls under, its worst-case cost, and whether this worker's slices of each can
hold it; if so it is reserved in all of them, else refused. Nothing here touches the disk.

In the background (`Gate._run`, every `refresh_seconds` or at once when a slice runs low):
reload budgets, limits and prices; give back what is held beyond need; sync every meter
with the lease store in one transaction. While no hard budget or rate limit exists, it
only reads whether one was set since (`change_versions`). Settlement (`settle_cost`) runs
on the recorder's thread once the row is priced; token counts settle on the event loop.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from llm_monitor.controls import periods
from llm_monitor.controls.budgets import (
    Budget,
    RateLimit,
    SpendScope,
    load_budgets,
    load_limits,
    nanos_usd,
    tags_of,
)
from llm_monitor.controls.leases import (
    RECLAIM_SECONDS,
    LeaseRequest,
    LeaseStore,
    SqliteLeaseStore,
    lease_seconds,
)
from llm_monitor.controls.periods import Window, window_of
from llm_monitor.readonly import ReadOnlyConnection

logger = logging.getLogger(__name__)

INPUT_KINDS = ("input", "cache_write", "cache_write_1h", "input_audio", "input_image")
OUTPUT_KINDS = ("output", "reasoning", "output_audio", "output_image")
# A hard budget refusing with this much per cent of it spent or reserved has reached its
# 100% (its recorded spend never does).
REFUSING_AT = 95
NANOS_PER_RATE = 1000  # a rate in USD per 1M tokens is this many nano-USD per token, times it


@dataclass(slots=True)
class Meter:
    """One budget's or rate limit's current window, as this worker holds it."""

    key: str  # budget:ID, rpm:ID, tpm:ID
    window: Window
    limit: int
    label: str  # how a refusal names it
    unit: str  # usd (nano-dollars), requests, tokens
    granted: int = 0  # this worker's slice: used and free
    used: int = 0  # spent and reserved by this worker
    peak: int = 0  # the largest single reservation seen: slices are sized by it
    committed: int = 0  # every worker's slices, as of the last sync
    synced: bool = False
    recorded: SpendScope | None = None  # a budget's: whose recorded spend counts in it
    budget: Budget | None = None  # a budget's, with its thresholds
    refusing: int | None = None  # spent or reserved when it first refused, until alerted
    alerted: bool = False  # its 100% alert is recorded (by this worker or another)

    @property
    def free(self) -> int:
        return self.granted - self.used

    def want_free(self, holders: int) -> int:
        """How much free to hold: a few of the largest requests, or a share of what is
        left, whichever is more; small when the window is nearly gone, so that one idle
        worker does not sit on what another needs."""
        left = max(self.limit - self.committed + self.free, 0)
        share = min(self.limit // (2 * holders), left // (2 * holders))
        return max(2 * self.peak, share, 1)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request was refused, for its 429."""

    message: str
    retry_after: int
    code: str


@dataclass(slots=True)
class Hold:
    """What one request reserved: (meter, amount) per meter, settled when its usage is
    known. A request whose usage is never seen keeps its reservation."""

    cost_parts: list[tuple[Meter, int]] = field(default_factory=list)
    token_parts: list[tuple[Meter, int]] = field(default_factory=list)
    request_parts: list[Meter] = field(default_factory=list)
    settled_cost: bool = False
    settled_tokens: bool = False


@dataclass(frozen=True, slots=True)
class Rules:
    """An organisation's hard budgets and rate limits."""

    budgets: tuple[Budget, ...] = ()
    limits: tuple[RateLimit, ...] = ()


def holder_name() -> str:
    return f"{os.uname().nodename}:{os.getpid()}:{secrets.token_hex(4)}"


class Gate:
    def __init__(
        self,
        db_path: str | Path,
        *,
        store: LeaseStore | None = None,
        refresh_seconds: float = 0.25,
        default_max_output: int = 32_768,
        clock: Callable[[], dt.datetime] = periods.now,
        reclaim_seconds: float = RECLAIM_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db_path = str(db_path)
        self._reader = ReadOnlyConnection(db_path)
        self.store: LeaseStore = store or SqliteLeaseStore(db_path, reclaim_seconds=reclaim_seconds)
        # Slices are spent from only this long after the last sync: past it, the store may
        # hand what this worker did not use to the others (see `leases.RECLAIM_SECONDS`).
        self.lease_seconds = lease_seconds(reclaim_seconds)
        self.monotonic = monotonic
        self._synced_at = -math.inf  # time.monotonic() of the last sync
        self.holder = holder_name()
        self.refresh_seconds = refresh_seconds
        self.default_max_output = default_max_output
        self.clock = clock
        self._lock = threading.Lock()
        self._rules: dict[int, Rules] = {}
        # By meter and window: near a boundary, both windows' meters are held.
        self._meters: dict[tuple[str, str], Meter] = {}
        self._book: Any = None
        self._prices_seen: int | None = None
        self._rates: dict[tuple[str, str], tuple[int, int] | None] = {}
        self._output_limits: dict[tuple[str, str], int] = {}
        self._holders = 1
        # The window each period is in, while the clock stays inside it (see `_window`).
        self._windows: dict[tuple[str, str | None, str | None], Window] = {}
        # The controls' change version at the last reload, and whether that reload found no
        # hard budget and no rate limit: then nothing is read again until the version moves.
        self._seen: tuple[Any, ...] | None = None
        self._idle = False
        # How early the next window's meters are taken, so that no request meets a window
        # this worker holds nothing of yet.
        self._lookahead = dt.timedelta(seconds=2 * refresh_seconds)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ready = False

    # The hot path.

    def active(self, org_id: int) -> bool:
        return org_id in self._rules

    def admit(
        self,
        *,
        org_id: int,
        token_id: int | None,
        user: str | None,
        tags: str | None,
        provider: str,
        model: str | None,
        billable: bool,
        prompt_bytes: int,
        max_output: int | None,
    ) -> Hold | Refusal | None:
        """Reserve the request's worst case in every meter it falls under; a Refusal if
        one of them cannot hold it; None if none applies."""
        rules = self._rules.get(org_id)
        if rules is None:
            return None
        at = self.clock()
        tag_values = tags_of(tags) if tags else {}
        budgets = [b for b in rules.budgets if b.matches(token_id, user, tag_values)]
        limits = [lim for lim in rules.limits if lim.matches(token_id)]
        if not budgets and not limits:
            return None
        output = max_output
        if output is None:
            output = self._output_limit(provider, model)
        tokens = prompt_bytes + output  # a token is at least a byte of what is sent
        cost: int | None = 0
        if budgets and billable and model is not None:
            rates = self._rates_for(provider, model)
            cost = None if rates is None else rates[0] * prompt_bytes + rates[1] * output
        elif budgets and billable:
            cost = None  # a billable call without a model: nothing to price it by
        wanted: list[tuple[Meter, int, str]] = []
        for budget in budgets:
            window = self._window(budget.period, at, budget.starts_on, budget.ends_on)
            if window is None:
                continue  # a date range not begun or over
            amount = cost
            if amount is None:
                if budget.on_unpriced == "refuse":
                    return Refusal(
                        f"{budget.describe()} is a hard budget and {model or 'this request'!s:.80} "
                        "has no price, so its cost cannot be held within it (LLM Monitor).",
                        3600,
                        "budget_unpriced_model",
                    )
                amount = 0  # let through: its row will say it is unpriced
            meter = self._meters.get((budget.meter, window.key))
            if meter is None or not meter.synced:
                return Refusal(
                    f"{budget.describe()}: this worker has no share of it yet; retry "
                    "(LLM Monitor).",
                    1,
                    "budget_not_ready",
                )
            wanted.append((meter, amount, "cost"))
        minute = self._window("minute", at).key  # type: ignore[union-attr]
        for limit in limits:
            for kind, amount, value in (("rpm", 1, limit.rpm), ("tpm", tokens, limit.tpm)):
                if value is None:
                    continue
                meter = self._meters.get((f"{kind}:{limit.id}", minute))
                if meter is None or not meter.synced:
                    return Refusal(
                        f"{limit.describe()}: this worker has no share of this minute yet; "
                        "retry (LLM Monitor).",
                        1,
                        "rate_limit_not_ready",
                    )
                wanted.append((meter, amount, kind))
        if wanted and self.monotonic() - self._synced_at > self.lease_seconds:
            budget = wanted[0][2] == "cost"
            return Refusal(
                "LLM Monitor could not renew this worker's share of "
                f"{'its budgets' if budget else 'its rate limits'} in time; retry.",
                1,
                "budget_not_ready" if budget else "rate_limit_not_ready",
            )
        with self._lock:
            for meter, amount, _ in wanted:
                if amount > meter.free:
                    meter.peak = max(meter.peak, amount)  # the next slice is sized for it
                    self._wake.set()
                    return self._refusal(meter, amount, at)
            hold = Hold()
            for meter, amount, kind in wanted:
                meter.used += amount
                if amount > meter.peak:
                    meter.peak = amount
                if meter.free < 2 * meter.peak:
                    self._wake.set()
                if kind == "cost":
                    hold.cost_parts.append((meter, amount))
                elif kind == "tpm":
                    hold.token_parts.append((meter, amount))
                else:
                    hold.request_parts.append(meter)
        return hold

    def _window(
        self, period: str, at: dt.datetime, starts_on: str | None = None, ends_on: str | None = None
    ) -> Window | None:
        """`window_of(...)`, remembered while `at` stays inside it: a window turns once a
        minute at the most, and this runs for every request under a budget or a limit."""
        key = (period, starts_on, ends_on)
        window = self._windows.get(key)
        if window is None or not window.start <= at < window.end:
            window = window_of(period, at, starts_on, ends_on)
            if window is not None:
                self._windows[key] = window
        return window

    def _refusal(self, meter: Meter, amount: int, at: dt.datetime) -> Refusal:
        until_reset = max(math.ceil((meter.window.end - at).total_seconds()), 1)
        exhausted = meter.committed - meter.free + amount > meter.limit
        resets = periods.usage_ts(meter.window.end)
        if meter.unit == "usd":
            text = (
                f"{meter.label} would be exceeded: ${nanos_usd(meter.committed - meter.free):.6g} "
                f"spent or reserved of ${nanos_usd(meter.limit):.6g}; this request may cost "
                f"up to ${nanos_usd(amount):.6g}. It resets at {resets}"
            )
            code = "budget_exceeded"
        else:
            text = (
                f"{meter.label}: {meter.committed - meter.free} of {meter.limit} {meter.unit} "
                f"this minute used or reserved; this request needs {amount}. It resets at {resets}"
            )
            code = "rate_limit_exceeded"
        if not exhausted:  # another worker holds the rest: its slice comes back soon
            return Refusal(f"{text}; retry in a second (LLM Monitor).", 1, code)
        committed = meter.committed - meter.free
        # Its 100% alert (raised off the loop) once it is spent or reserved to within
        # REFUSING_AT of its limit: one large request refused early is not a budget at 100%.
        if (
            meter.unit == "usd"
            and not meter.alerted
            and meter.refusing is None
            and committed * 100 >= meter.limit * REFUSING_AT
        ):
            meter.refusing = committed
            self._wake.set()
        return Refusal(f"{text} (LLM Monitor).", until_reset, code)

    def settle_tokens(self, hold: Hold, tokens: int | None) -> None:
        """The request's actual tokens (event loop); None keeps the reservation."""
        if hold.settled_tokens:
            return
        hold.settled_tokens = True
        if tokens is None:
            return
        with self._lock:
            for meter, reserved in hold.token_parts:
                meter.used += tokens - reserved

    def settle_cost(self, hold: Hold, cost_usd: float | None) -> None:
        """The request's priced cost (recorder thread); None keeps the reservation."""
        if hold.settled_cost:
            return
        hold.settled_cost = True
        if cost_usd is None:
            return
        actual = math.ceil(Decimal(repr(cost_usd)) * 10**9)
        with self._lock:
            for meter, reserved in hold.cost_parts:
                meter.used += actual - reserved

    def release(self, hold: Hold) -> None:
        """The request never reached the provider: nothing of it was spent."""
        with self._lock:
            if not hold.settled_cost:
                for meter, reserved in hold.cost_parts:
                    meter.used -= reserved
            if not hold.settled_tokens:
                for meter, reserved in hold.token_parts:
                    meter.used -= reserved
            for meter in hold.request_parts:
                meter.used -= 1
        hold.settled_cost = hold.settled_tokens = True

    # Prices and output limits, for the worst case.

    def _output_limit(self, provider: str, model: str | None) -> int:
        """The model's output limit (`money.output_limits`), for a request without one."""
        if model is None:
            return self.default_max_output
        key = (provider, model)
        limit = self._output_limits.get(key)
        if limit is None:
            from llm_monitor.money.output_limits import output_limit

            limit = output_limit(provider, model, self.default_max_output)
            if len(self._output_limits) > 10_000:
                self._output_limits.clear()
            self._output_limits[key] = limit
        return limit

    def _rates_for(self, provider: str, model: str) -> tuple[int, int] | None:
        key = (provider, model)
        if key in self._rates:
            return self._rates[key]
        rates = None
        book = self._book
        if book is not None:
            from llm_monitor.money.costs import Unpriced  # loaded already, with the book

            try:
                quote = book.quote(provider, model, self.clock())
            except Unpriced:
                quote = None
            if quote is not None:
                ins = [quote.rates[k] for k in INPUT_KINDS if quote.rates.get(k) is not None]
                outs = [quote.rates[k] for k in OUTPUT_KINDS if quote.rates.get(k) is not None]
                if ins and outs:
                    rates = (
                        math.ceil(max(ins) * NANOS_PER_RATE),
                        math.ceil(max(outs) * NANOS_PER_RATE),
                    )
        if len(self._rates) > 10_000:
            self._rates.clear()
        self._rates[key] = rates
        return rates

    # The background.

    def start(self) -> None:
        """Load and sync once (a worker serves no budgeted request before it holds a
        share), then keep it current on a thread."""
        self.refresh()
        self._thread = threading.Thread(target=self._run, name="llm-monitor-controls", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        try:
            self._sync(final=True)  # unused slices go back
        except sqlite3.Error as e:
            logger.warning("llm-monitor: could not give back budget slices (%s)", e)
        close = getattr(self.store, "close", None)
        if close is not None:
            close()
        self._reader.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.refresh_seconds)
            self._wake.clear()
            if self._stop.is_set():
                break
            self.refresh()

    def refresh(self) -> None:
        """Reload what changed and sync every meter with the lease store; on a database
        error keep what is held and try again next time."""
        try:
            self._reload()
            self._sync()
            self._raise_refusing()
            self.ready = True
        except sqlite3.Error as e:
            logger.warning("llm-monitor: could not refresh budgets and rate limits (%s)", e)

    def _reload(self) -> None:
        with self._reader.reading() as conn:
            seen = self._reader.version(conn, "controls")
            if self._idle and seen is not None and seen == self._seen:
                return  # no rules before, none since: no meter to take or turn over
            budgets = [b for b in load_budgets(conn) if b.hard]
            limits = load_limits(conn)
            prices = conn.execute("select version from prices_version").fetchall()[0][0]
        now = self.clock()
        moments = (now, now + self._lookahead)  # this window and, near its end, the next
        rules: dict[int, Rules] = {}
        meters: dict[tuple[str, str], Meter] = {}
        for budget in budgets:
            windows = {w.key: w for w in map(budget.window, moments) if w is not None}
            for window in windows.values():
                meter = self._meter(budget.meter, window, budget.limit, budget.describe(), "usd")
                meter.recorded = budget.spend_scope(window)
                meter.budget = budget
                meters[meter.key, window.key] = meter
            if windows:  # else a date range not yet begun, or over: nothing to hold
                old = rules.get(budget.org_id, Rules())
                rules[budget.org_id] = Rules((*old.budgets, budget), old.limits)
        minutes = {w.key: w for w in (window_of("minute", m) for m in moments) if w is not None}
        for limit in limits:
            for kind, value, unit in (("rpm", limit.rpm, "requests"), ("tpm", limit.tpm, "tokens")):
                if value is not None:
                    key = f"{kind}:{limit.id}"
                    for minute in minutes.values():
                        meter = self._meter(key, minute, value, limit.describe(), unit)
                        meters[key, minute.key] = meter
            old = rules.get(limit.org_id, Rules())
            rules[limit.org_id] = Rules(old.budgets, (*old.limits, limit))
        if budgets and (self._book is None or prices != self._prices_seen):
            from llm_monitor.money.costs import load_price_book
            from llm_monitor.store.database import open_db

            db = open_db(self.db_path, migrate=False)
            try:
                book = load_price_book(db)
            finally:
                db.conn.close()
            self._book, self._prices_seen, self._rates = book, prices, {}
        with self._lock:
            self._meters = meters
            self._rules = rules
        self._seen, self._idle = seen, not budgets and not limits

    def _raise_refusing(self) -> None:
        """Record the 100% alert of each hard budget that began refusing requests (once
        per window: the alerts' unique key keeps other workers from raising it again)."""
        due = [m for m in self._meters.values() if m.refusing is not None and not m.alerted]
        if not due:
            return
        from llm_monitor.controls.alerts import record, refusing_draft
        from llm_monitor.store.database import open_db

        db = open_db(self.db_path, migrate=False, busy_timeout_ms=2000)
        try:
            drafts = [
                refusing_draft(db, m.budget, m.window, m.refusing)
                for m in due
                if m.budget is not None and m.refusing is not None and 100 in m.budget.thresholds
            ]
            record(db, drafts, self.clock())
        finally:
            db.conn.close()
        for meter in due:
            meter.alerted = True

    def _meter(self, key: str, window: Window, limit: int, label: str, unit: str) -> Meter:
        """The meter of this window: the one held so far (its slice and use kept), with
        the limit as it is now; a new one when the window turned."""
        meter = self._meters.get((key, window.key))
        if meter is None:
            return Meter(key, window, limit, label, unit)
        meter.limit, meter.label = limit, label
        return meter

    def _sync(self, *, final: bool = False) -> None:
        """Tell the store what each meter used and take what it needs; `final`: keep
        nothing beyond what was used (the worker stops)."""
        with self._lock:
            meters = list(self._meters.values())
            requests = []
            for meter in meters:
                want = 0 if final else meter.want_free(self._holders)
                if final:
                    meter.granted = meter.used
                elif meter.committed > meter.limit or meter.free > 2 * want:
                    # Lowered below what is taken, or more held than needed: give back
                    # (before the store hears of it, so none of it is spent meanwhile).
                    meter.granted = meter.used + (0 if meter.committed > meter.limit else want)
                requests.append(
                    LeaseRequest(
                        meter.key,
                        meter.window.key,
                        meter.limit,
                        meter.used,
                        meter.granted,
                        want,
                        meter.recorded,
                    )
                )
        started = self.monotonic()  # what the store grants holds from before it answers
        leases = self.store.sync(self.holder, requests)
        with self._lock:
            holders = 1
            for meter, lease in zip(meters, leases, strict=True):
                meter.granted = lease.granted  # less than held only if it was reclaimed
                meter.committed = lease.committed
                meter.synced = True
                holders = max(holders, lease.holders)
            self._holders = holders
            if not final:
                self._synced_at = started
