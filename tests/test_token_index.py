"""The token index the proxy checks every request against reads the database through one
connection kept open (`readonly.ReadOnlyConnection`): it still follows new and revoked
tokens, reads a database made anew at its path, and keeps its last good set while the file
cannot be read."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from llm_monitor.accounts.tokens import TokenIndex
from llm_monitor.money.costs import PriceBook, price_row
from llm_monitor.store.database import open_db
from llm_monitor.store.recorder import write_rows
from tests.conftest import invoke, new_org, usage_record


def test_follows_new_and_revoked_tokens(fresh_db: Path) -> None:
    index = TokenIndex(fresh_db)
    index.reload()
    assert len(index) == 0
    token = new_org(fresh_db, "Acme")
    index.reload()
    owner = index.owner(token)
    assert owner is not None and owner.org_id == 1
    invoke(fresh_db, "tokens", "revoke", token)
    index.reload()
    assert index.owner(token) is None
    index.stop()


def test_reads_the_tokens_again_only_when_they_changed(fresh_db: Path) -> None:
    """Once a second, per worker: only the tokens' change version is read while no token
    was made or revoked, even as the recorder stamps each token's last use."""
    token = new_org(fresh_db, "Acme")
    index = TokenIndex(fresh_db)
    index.reload()
    statements: list[str] = []
    with index._reader.reading() as conn:
        conn.set_trace_callback(statements.append)
    db = open_db(fresh_db)
    write_rows(db, [price_row(usage_record(token_id=1), PriceBook([]))])
    assert db.execute("select last_used_at from monitor_tokens").fetchone()[0] is not None
    index.reload()
    assert statements == ["select version from change_versions where name = 'tokens'"]
    invoke(fresh_db, "tokens", "revoke", token)
    index.reload()
    assert index.owner(token) is None
    assert any("from monitor_tokens" in s for s in statements[1:])
    index.stop()


def test_reads_a_database_made_anew_at_its_path(fresh_db: Path) -> None:
    old_token = new_org(fresh_db, "Acme")
    index = TokenIndex(fresh_db)
    index.reload()
    assert index.owner(old_token) is not None
    for path in fresh_db.parent.glob(f"{fresh_db.name}*"):  # the file, its -wal and -shm
        path.unlink()
    invoke(fresh_db, "init")
    new_token = new_org(fresh_db, "Beta")
    index.reload()
    assert index.owner(new_token) is not None
    assert index.owner(old_token) is None
    index.stop()


def test_keeps_its_tokens_while_the_file_is_gone(
    fresh_db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token = new_org(fresh_db, "Acme")
    index = TokenIndex(fresh_db)
    index.reload()
    moved = fresh_db.with_name("elsewhere.db")
    fresh_db.rename(moved)
    with caplog.at_level(logging.WARNING):
        index.reload()
    assert "could not reload monitor tokens" in caplog.text
    assert index.owner(token) is not None  # the last good set
    moved.rename(fresh_db)
    invoke(fresh_db, "tokens", "revoke", token)
    index.reload()
    assert index.owner(token) is None
    index.stop()
