"""The demo's database and proxy: two organisations with logins and monitor tokens,
generated history, and a wait for the proxy to start recording. `llm-monitor demo` and
the README's screenshots use it."""

from __future__ import annotations

import datetime as dt
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from sqlite_utils import Database

from llm_monitor.accounts.orgs import create_org
from llm_monitor.accounts.passwords import hash_password
from llm_monitor.accounts.tokens import create_token
from llm_monitor.controls.alerts import evaluate
from llm_monitor.controls.budgets import set_budget
from llm_monitor.demo import synthetic
from llm_monitor.errors import DomainError
from llm_monitor.money.sync import install_defaults
from llm_monitor.store.database import open_db

DEMO_ORGS = {  # name: (login email, password, monitor token labels)
    "Acme Corp": ("acme@demo.example", "acme-demo-password", ("web-app", "batch-jobs")),
    "Globex": ("globex@demo.example", "globex-demo-password", ("support-bot",)),
}


@dataclass(frozen=True)
class DemoDatabase:
    tokens: list[str]  # monitor tokens, Acme Corp's first
    history_rows: int


def create_demo_db(path: str, history_days: int) -> DemoDatabase:
    """Make `path` anew: default prices, the demo organisations, and `history_days` of
    generated usage ending five minutes ago."""
    for suffix in ("", "-wal", "-shm", ".spool.jsonl"):
        Path(path + suffix).unlink(missing_ok=True)
    db = open_db(path)
    install_defaults(db)
    tokens: list[str] = []
    org_ids = []
    for name, (email, password, labels) in DEMO_ORGS.items():
        org = create_org(
            db, name, email, password_hash=hash_password(password), token_label=labels[0]
        )
        org_ids.append(org.org_id)
        tokens.append(org.token)
        with db.atomic():
            tokens += [create_token(db, "monitor_tokens", org.org_id, x)[1] for x in labels[1:]]
    rows = 0
    if history_days:
        end = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        report = synthetic.generate(
            db, org_ids=org_ids, days=history_days, rows=history_days * 1500, end=end
        )
        rows = report.rows
        add_budgets(db, org_ids, end.date() - dt.timedelta(days=history_days), end.date())
    db.conn.close()
    return DemoDatabase(tokens, rows)


def add_budgets(db: Database, org_ids: list[int], first: dt.date, last: dt.date) -> None:
    """Per organisation, a soft budget over the history that it has run past half of (so
    that the Budgets and Alerts views have something to show) and a generous hard monthly
    one that the demo's traffic stays within."""
    for org_id in org_ids:
        spent = db.execute(
            "select coalesce(sum(cost_usd), 0) from usage where org_id = ? and ts >= ?",
            [org_id, first.isoformat()],
        ).fetchone()[0]
        set_budget(
            db,
            org_id,
            scope="org",
            scope_value=None,
            period=f"range:{first}..{last}",
            usd=f"{max(spent * 1.6, 0.01):.2f}",
            hard=False,
        )
        set_budget(
            db,
            org_id,
            scope="org",
            scope_value=None,
            period="month",
            usd=f"{max(spent * 20, 100):.2f}",
            on_unpriced="allow",  # the demo's traffic includes a model without a price
        )
    evaluate(db)


def wait_until_recording(proxy: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    """Until the addon runs, requests get a 503: wait for its start line."""
    deadline = time.monotonic() + timeout
    while "llm-monitor: recording usage in" not in log.read_text(errors="replace"):
        if proxy.poll() is not None or time.monotonic() > deadline:
            raise DomainError(f"the proxy did not start:\n{log.read_text()}")
        time.sleep(0.05)
