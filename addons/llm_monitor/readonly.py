"""A read-only SQLite connection kept open between the reads of a background thread.

The proxy's token index and its gate read the database several times a second. A new
connection parses the whole schema before its first query (about 300 µs of CPU here, on
the proxy's core, five times a second, more under load); an open one reads the schema
again only when it changed. Each read is one statement run to its end, so no snapshot is
held between reads (a checkpoint is never kept waiting). A file replaced meanwhile (one
removed and made anew) is opened anew, as a new connection per read would.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class ReadOnlyConnection:
    def __init__(self, db_path: str | Path, timeout: float = 0.5) -> None:
        self.db_path = str(db_path)
        self.timeout = timeout
        self._conn: sqlite3.Connection | None = None
        self._opened: tuple[int, int] | None = None  # the file's (device, inode) when opened

    @contextlib.contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """The open connection (opened if need be) for a few queries, each run to its end.
        On an error it is closed, the next read opening a new one (the file may have been
        replaced), and the error raised. Used by one thread at a time (the one that starts
        the reader, then its own), hence not tied to the thread that opened it."""
        opened = file_identity(self.db_path)
        if self._conn is not None and opened != self._opened:
            self.close()
        if self._conn is None:
            self._opened = opened
            self._conn = sqlite3.connect(
                f"file:{self.db_path}?mode=ro",
                uri=True,
                timeout=self.timeout,
                check_same_thread=False,
            )
        try:
            yield self._conn
        except sqlite3.Error:
            self.close()
            raise

    def version(self, conn: sqlite3.Connection, name: str) -> tuple[Any, ...] | None:
        """The state of the tables `change_versions` follows under `name`, as this file and
        that number (read it before the tables: a change after it is seen next time); None
        where the database keeps no such number (its schema is older): read them anyway."""
        try:
            row = conn.execute(
                "select version from change_versions where name = ?", [name]
            ).fetchone()
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):
                return None
            raise
        return (self._opened, row[0]) if row else None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def file_identity(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino
