"""Leases: how workers share a budget or a rate limit without asking anyone per request.

A worker (a *holder*) takes a slice of a meter's window from the lease store and spends
from it in memory; when it runs low it takes another, and what it holds beyond its need
goes back. The store only ever grants what no holder has taken, in one transaction, so
the slices of all holders together never exceed the limit.

`LeaseStore` is the whole interface the proxy needs: SQLite implements it for the workers
of one host; a store shared by several hosts can implement the same one method.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from llm_monitor.controls.budgets import SpendScope, bucket_start, recorded_nanos
from llm_monitor.usage import utc_timestamp

# A holder not heard of for this long is not counted among the active ones.
ACTIVE_SECONDS = 10.0
# A holder not heard of for this long (a worker killed, or stalled) loses the free part of
# its slices: what it had not used when it last synced. A holder spends from a slice only
# while its last sync is younger than `lease_seconds(reclaim)` (see `Gate`), so what it
# reserved after that sync has had the rest of this time to be recorded; what it had
# reserved before is in its `used` and stays taken.
RECLAIM_SECONDS = 900.0


def lease_seconds(reclaim_seconds: float) -> float:
    """How long a holder may spend from its slices after its last sync: a third of the
    reclaim time (at most a minute), the rest left for the requests it admitted to end."""
    return min(60.0, reclaim_seconds / 3)


@dataclass(frozen=True, slots=True)
class LeaseRequest:
    """What a holder says about one meter's window: how much it has used (spent or
    reserved), how much it keeps (used and free; less than it was granted when it gives
    some back) and how much free it wants to hold."""

    meter: str
    window: str
    limit: int
    used: int
    holding: int
    want_free: int
    # A budget's: whose spend recorded before the window's first lease counts in it.
    recorded: SpendScope | None = None


@dataclass(frozen=True, slots=True)
class Lease:
    meter: str
    window: str
    granted: int  # this holder's slice, used and free together
    committed: int  # every holder's slices together: never more than the limit
    holders: int  # holders active on this meter


class LeaseStore(Protocol):
    def sync(self, holder: str, requests: list[LeaseRequest]) -> list[Lease]:
        """Record each request's `used` and `holding` (what it keeps: a holder gives
        back by keeping less, never by being taken from; a holder that stops keeps only
        what it used), then top its free part up to
        `want_free` from what no holder has taken of `limit`, all at once; returns the
        holder's leases in the same order.

        A request with `recorded` counts, in what is taken, the spend recorded in that
        scope and window before the window's first lease (read then, and again when the
        limit changes: a budget set mid-month starts from the month's spend)."""
        ...


class SqliteLeaseStore:
    """Leases in the usage database's `control_leases` table. Used from one thread."""

    def __init__(
        self,
        db_path: str | Path,
        busy_timeout_ms: int = 2000,
        *,
        reclaim_seconds: float = RECLAIM_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db_path = str(db_path)
        self.busy_timeout_ms = busy_timeout_ms
        self.reclaim_seconds = reclaim_seconds
        self.clock = clock
        self._conn: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            # Used by one thread at a time (the gate's first sync, then its thread).
            conn = sqlite3.connect(
                self.db_path,
                timeout=self.busy_timeout_ms / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._conn = conn
        return self._conn

    def sync(self, holder: str, requests: list[LeaseRequest]) -> list[Lease]:
        if not requests:
            return []
        conn = self._connection()
        seen = self.clock()
        leases = []
        # BEGIN IMMEDIATE: the write lock first, so that two holders never both read the
        # same remainder and both take it.
        conn.execute("begin immediate")
        try:
            for r in requests:
                # Silent holders give back what they had not used.
                conn.execute(
                    "update control_leases set granted = used where meter = ? and window = ? "
                    "and holder != ? and seen_at < ? and granted > used",
                    (r.meter, r.window, holder, seen - self.reclaim_seconds),
                )
                row = conn.execute(
                    "select granted from control_leases where meter = ? and window = ? "
                    "and holder = ?",
                    (r.meter, r.window, holder),
                ).fetchone()
                # What it keeps: never more than the store says it has (less, if it was
                # reclaimed while it was silent), and at least what it used.
                granted = max(min(r.holding, row[0] if row else 0), r.used)
                before = 0 if r.recorded is None else self._baseline(conn, r, seen)
                total, holders = conn.execute(
                    "select coalesce(sum(granted), 0), "
                    "count(case when seen_at > ? then 1 end) from control_leases "
                    "where meter = ? and window = ? and holder != ?",
                    (seen - ACTIVE_SECONDS, r.meter, r.window, holder),
                ).fetchone()
                total += before
                free = granted - r.used
                if free < r.want_free:
                    granted += max(min(r.want_free - free, r.limit - total - granted), 0)
                conn.execute(
                    "insert into control_leases (meter, window, holder, granted, used, seen_at) "
                    "values (?, ?, ?, ?, ?, ?) on conflict (meter, window, holder) do update "
                    "set granted = excluded.granted, used = excluded.used, "
                    "seen_at = excluded.seen_at",
                    (r.meter, r.window, holder, granted, r.used, seen),
                )
                leases.append(Lease(r.meter, r.window, granted, total + granted, holders + 1))
            # Per-minute windows are of no use once past: keep the table small.
            conn.execute(
                "delete from control_leases where meter not like 'budget:%' and seen_at < ?",
                (seen - 180,),
            )
            conn.execute("commit")
        except BaseException:
            conn.execute("rollback")
            raise
        return leases

    @staticmethod
    def _baseline(conn: sqlite3.Connection, r: LeaseRequest, seen: float) -> int:
        """The spend recorded in the window before its leases began (`control_baselines`),
        read from the rollups only (a few hundred rows, inside this write transaction).

        At the window's first lease nothing has been admitted under it yet, so all that is
        recorded counts. When the limit changes it is read again, to count rows recorded
        late (requests in flight when the leases began): the part before the rollup
        bucket (hour; day by tag) holding that first moment is read anew, the rest kept,
        since rows admitted under the leases are in it by now."""
        assert r.recorded is not None
        row = conn.execute(
            "select since, limit_value, spent, before_bucket from control_baselines "
            "where meter = ? and window = ?",
            (r.meter, r.window),
        ).fetchone()
        if row is not None and row[1] == r.limit:
            return int(row[2])
        scope = r.recorded
        since = row[0] if row is not None else seen
        cut = min(max(bucket_start(scope.scope, utc_timestamp(since)), scope.start), scope.end)
        before = recorded_nanos(conn, replace(scope, end=cut))
        if row is None:
            spent = before + recorded_nanos(conn, replace(scope, start=cut))
        else:
            spent = int(row[2]) - int(row[3]) + before
        conn.execute(
            "insert into control_baselines (meter, window, since, limit_value, spent, "
            "before_bucket) values (?, ?, ?, ?, ?, ?) on conflict (meter, window) do update "
            "set limit_value = excluded.limit_value, spent = excluded.spent, "
            "before_bucket = excluded.before_bucket",
            (r.meter, r.window, since, r.limit, spent, before),
        )
        return spent

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
