"""The recorder: one background thread that prices usage rows and writes them in batches.

The proxy's event loop only puts records on a queue. The thread writes them through
sqlite-utils, many rows per transaction. When the database is locked or cannot be written,
rows wait in memory and the write is retried with backoff; traffic is never held up. On
close, everything queued is written; what still cannot be written by the deadline goes to a
JSONL spool file next to the database (`llm-monitor import-spool` loads it), never dropped.
"""

from __future__ import annotations

import json
import logging
import operator
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from llm_monitor.money.costs import PriceBook, load_price_book, price_row
from llm_monitor.money.prices import prices_version
from llm_monitor.store import rollups
from llm_monitor.store.database import open_db
from llm_monitor.usage import UsageRecord, UsageRow, billed_model, fields_of

logger = logging.getLogger(__name__)

_STOP = object()


def write_rows(db: Database, rows: list[dict[str, Any]], omissible: set[str] | None = None) -> None:
    """One transaction: the rows, and the last-used time of the tokens they name.

    One prepared INSERT run with executemany on the sqlite-utils connection: insert_all
    looks the table up and splits the batch on every call, Python work that holds the GIL
    the proxy's event loop needs (measured: scripts/benchmark.py). It names only the
    columns some row of the batch has a value in: about half of them are NULL in every row
    of a batch (audio, images, tools), and binding them cost a quarter of the insert.
    `omissible` is `null_when_left_out(db)`, when the caller keeps it.
    """
    if not rows:
        return
    if omissible is None:
        omissible = null_when_left_out(db)
    columns = columns_with_values(rows, omissible)
    last_used: dict[int, str] = {}
    for row in rows:
        if row["token_id"] is not None:
            last_used[row["token_id"]] = max(row["ts"], last_used.get(row["token_id"], ""))
    values = operator.itemgetter(*columns)
    with db.atomic():
        (before,) = db.conn.execute("select coalesce(max(rowid), 0) from usage").fetchone()
        db.conn.executemany(
            f"insert into usage ({', '.join(f'[{c}]' for c in columns)}) "
            f"values ({', '.join('?' * len(columns))})",
            map(values, rows),
        )
        rollups.add(db, before)
        db.conn.executemany(
            "update monitor_tokens set last_used_at = ? where id = ? "
            "and (last_used_at is null or last_used_at < ?)",
            [(ts, token_id, ts) for token_id, ts in last_used.items()],
        )


def null_when_left_out(db: Database) -> set[str]:
    """Columns of `usage` that an INSERT leaving them out makes NULL (no default)."""
    return {row[1] for row in db.conn.execute("pragma table_info(usage)") if row[4] is None}


def schema_version(db: Database) -> int:
    """SQLite's count of schema changes to the file (a migration adds one or more)."""
    return db.execute("pragma schema_version").fetchone()[0]


def columns_with_values(rows: list[dict[str, Any]], omissible: set[str]) -> list[str]:
    """The rows' columns, less the omissible ones that are None in every row. (C-level
    loops: a generator over the rows, per column, cost more than the binding it saves.)"""
    first, count = rows[0], len(rows)
    return [
        column
        for column, value in first.items()
        if value is not None
        or column not in omissible
        or list(map(operator.itemgetter(column), rows)).count(None) != count
    ]


def spool_path_for(db_path: str | Path) -> Path:
    return Path(f"{db_path}.spool.jsonl")


class Recorder:
    def __init__(
        self,
        db_path: str | Path,
        *,
        batch_size: int = 1000,
        max_delay: float = 0.2,
        max_backoff: float = 1.0,
        max_pending: int = 200_000,
        on_written: Callable[[list[dict[str, Any]]], None] | None = None,
    ) -> None:
        self.db_path = Path(db_path)
        self.batch_size = batch_size
        self.max_delay = max_delay
        self.max_backoff = max_backoff
        self.max_pending = max_pending  # rows held in memory during an outage, at most
        self.written = 0
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closing = threading.Event()
        self._pending: list[UsageRecord | UsageRow] = []
        self._thread: threading.Thread | None = None
        self._deadline: float | None = None
        self._warned_unpriced: set[tuple[str, str | None]] = set()
        self._waiting_since: float | None = None  # when the oldest row in memory came
        # Set once the thread has opened the database and built its price book, or failed
        # to: what start-up leaves behind is then known (the proxy freezes its heap).
        self.warmed = threading.Event()
        self.on_written = on_written  # called on the recorder's thread with written rows
        # Called on this thread with the priced row (spend controls settle by it); keyed by
        # the record's identity, so that the queue and the spool keep plain records.
        self._on_priced: dict[int, Callable[[dict[str, Any]], None]] = {}

    @property
    def queue_rows(self) -> int:
        """Rows submitted and not written yet (approximate while the thread runs)."""
        return self._queue.qsize() + len(self._pending)

    @property
    def write_lag(self) -> float:
        """Seconds the oldest row still in memory has waited (0 when none waits)."""
        since = self._waiting_since
        return time.monotonic() - since if since is not None else 0.0

    def submit(
        self,
        record: UsageRecord | UsageRow,
        on_priced: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        """Never blocks: safe to call from the proxy's event loop. The record is not
        changed, nor validated again (the proxy's rows are its own typed values; a spooled
        row is validated when it is imported). `on_priced` is called once, on the
        recorder's thread, with the row when it is priced (not for a row spooled
        unpriced)."""
        if on_priced is not None:
            self._on_priced[id(record)] = on_priced
        self._queue.put(record)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="llm-monitor-recorder", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Write everything queued; spool to JSONL what cannot be written within `timeout`."""
        if self._thread is None:
            return
        self._deadline = time.monotonic() + timeout
        self._queue.put(_STOP)
        self._closing.set()  # no more batching delays: write what there is
        self._thread.join(timeout + 5)
        self._thread = None

    def _run(self) -> None:
        db: Database | None = None
        book = PriceBook([])
        data_version = prices_seen = schema_seen = None
        omissible: set[str] = set()  # null_when_left_out(db), read again when the schema changes
        backoff = 0.0
        outage_since: float | None = None
        stopping = False
        warm = True  # build the price book before the first row, not while it waits
        while True:
            if not warm:
                stopping = self._collect(backoff) or stopping
            if len(self._pending) > self.max_pending:  # a long outage: keep memory bounded
                self._spool(self._pending)
                self._pending.clear()
            if db is None and (self._pending or warm):
                warm = False
                try:
                    db = open_db(self.db_path, migrate=False)
                    data_version = db.execute("pragma data_version").fetchone()[0]
                    prices_seen = prices_version(db)
                    book = load_price_book(db)
                    schema_seen = schema_version(db)
                    omissible = null_when_left_out(db)
                except sqlite3.Error as e:
                    db = None
                    outage_since = self._outage(outage_since, e)
                    backoff = min(max(backoff * 2, 0.05), self.max_backoff)
                self.warmed.set()
            if db is not None and self._pending:
                try:
                    version = db.execute("pragma data_version").fetchone()[0]
                    if version != data_version:  # someone else committed: prices may have changed
                        data_version = version
                        if (seen := prices_version(db)) != prices_seen:
                            book, prices_seen = load_price_book(db), seen
                        if (schema := schema_version(db)) != schema_seen:  # a migration ran
                            omissible, schema_seen = null_when_left_out(db), schema
                    batch = self._pending[: self.batch_size]
                    priced = [self._priced(r, book) for r in batch]
                    write_rows(db, priced, omissible)
                    del self._pending[: len(batch)]
                    self.written += len(batch)
                    if not self._pending:
                        self._waiting_since = None
                    self._written(priced)
                    if outage_since is not None:
                        logger.warning(
                            "llm-monitor: database writable again after %.1fs; %d rows waiting",
                            time.monotonic() - outage_since,
                            len(self._pending),
                        )
                        outage_since = None
                    backoff = 0.0
                except sqlite3.Error as e:
                    outage_since = self._outage(outage_since, e)
                    backoff = min(max(backoff * 2, 0.05), self.max_backoff)
                    if not isinstance(e, sqlite3.OperationalError) or "locked" not in str(e):
                        # A connection that met a read-only or failing file stays that way:
                        # start afresh (a lock, on the other hand, just passes).
                        db.conn.close()
                        db = None
                except Exception:  # a row SQLite cannot take: find it, spool it, go on
                    self._isolate(db, book)
            if stopping and (not self._pending or time.monotonic() >= (self._deadline or 0)):
                break
        if self._pending:
            self._spool(self._pending)
        if db is not None:
            db.conn.close()

    def _isolate(self, db: Database, book: PriceBook) -> None:
        """Write the next batch row by row; rows that fail for a reason other than the
        database (an absurd value, a bug) are spooled and logged instead of blocking all."""
        batch = self._pending[: self.batch_size]
        done = 0
        for record in batch:
            try:
                row = self._priced(record, book)
                write_rows(db, [row])
            except sqlite3.Error:
                break  # the database itself: retry later as usual
            except Exception as e:
                logger.error("llm-monitor: usage row could not be written (%r); spooling it", e)
                self._spool([record])
            else:
                self.written += 1
                self._written([row])
            done += 1
        del self._pending[:done]
        if not self._pending:
            self._waiting_since = None

    def _collect(self, backoff: float) -> bool:
        """Move queued records to pending; True once the stop sentinel has been seen.

        Idle, it waits for a first record (or the stop sentinel: an idle thread never wakes
        on its own), then sleeps `max_delay` and takes everything that came meanwhile: one
        wake-up and one transaction per batch, not one per request. With rows left over it
        only drains what is queued; during an outage it sleeps `backoff` first.
        """
        if not self._pending:
            first = self._queue.get()
            if first is _STOP:
                return True
            self._pending.append(first)
            self._waiting_since = time.monotonic()
            self._closing.wait(self.max_delay)
        elif backoff:
            self._closing.wait(backoff)
        stop = False
        while len(self._pending) < self.batch_size:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                stop = True
            else:
                self._pending.append(item)
        return stop

    def _written(self, rows: list[dict[str, Any]]) -> None:
        if self.on_written is not None:
            try:
                self.on_written(rows)
            except Exception:  # a metrics failure must not stop the writing
                logger.exception("llm-monitor: on_written failed")

    def _outage(self, since: float | None, error: sqlite3.Error) -> float:
        """Log the start of an outage once; rows wait in memory meanwhile."""
        if since is None:
            logger.warning(
                "llm-monitor: cannot write usage to %s (%s); holding %d rows in memory and "
                "retrying",
                self.db_path,
                error,
                len(self._pending),
            )
            return time.monotonic()
        return since

    def _priced(self, record: UsageRecord | UsageRow, book: PriceBook) -> dict[str, Any]:
        row = price_row(record, book)
        if self._on_priced and (callback := self._on_priced.pop(id(record), None)) is not None:
            try:
                callback(row)
            except Exception:
                logger.exception("llm-monitor: settling a request's reservation failed")
        key = (row["provider"], billed_model(row))
        reason = row["unpriced_reason"]
        if reason not in (None, "usage_unseen") and key not in self._warned_unpriced:
            self._warned_unpriced.add(key)
            logger.warning(
                "llm-monitor: cannot price %s model %r (%s): cost recorded as NULL "
                "(see `llm-monitor pricing check`)",
                *key,
                reason,
            )
        return row

    def _spool(self, records: Iterable[UsageRecord | UsageRow]) -> None:
        """Rows the database would not take, as JSONL next to it; loud if even that fails."""
        path = spool_path_for(self.db_path)
        records = list(records)
        for record in records:  # never priced here: their reservations are kept
            self._on_priced.pop(id(record), None)
        try:
            with path.open("a", encoding="utf-8") as f:
                for record in records:
                    try:
                        line = json.dumps(fields_of(record))
                    except (TypeError, ValueError, AttributeError) as e:  # a bug, not data
                        logger.critical(
                            "llm-monitor: a usage row LOST: %s cannot be written anywhere (%r)",
                            type(record).__name__,
                            e,
                        )
                        continue
                    f.write(line + "\n")
        except OSError as e:
            logger.critical(
                "llm-monitor: %d usage rows LOST: neither %s nor %s could be written (%s)",
                len(records),
                self.db_path,
                path,
                e,
            )
            return
        logger.error(
            "llm-monitor: %d usage rows could not be written to the database and were saved "
            "to %s; load them with `llm-monitor import-spool %s`",
            len(records),
            path,
            path,
        )
