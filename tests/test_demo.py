"""`llm-monitor demo` fills every view without a provider key."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from llm_monitor.accounts.passwords import verify_password
from llm_monitor.dashboard import make_datasette
from llm_monitor.demo.setup import DEMO_ORGS
from llm_monitor.demo.traffic import UNPRICED_MODEL
from llm_monitor.usage import utc_timestamp
from tests.test_dashboard import ADMIN_VIEWS, ORG_VIEWS

DEMO_ARGS = ("--requests", "60", "--history-days", "1", "--no-serve")


def test_demo_fills_every_view_for_both_organisations(tmp_path: Path) -> None:
    db_path = tmp_path / "demo.db"
    db_path.write_text("an old file the demo replaces")
    started = utc_timestamp(time.time())
    result = subprocess.run(
        [sys.executable, "-m", "llm_monitor", "demo", "--file", str(db_path), *DEMO_ARGS],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "traffic: 60 requests through the proxy" in result.stderr
    with sqlite3.connect(db_path) as conn:
        total = conn.execute("select count(*) from usage").fetchone()[0]
        live = conn.execute("select count(*) from usage where ts >= ?", [started]).fetchone()[0]
        orgs = conn.execute(
            "select o.id, o.email, p.password_hash from orgs o join members m on m.org_id = o.id "
            "join people p on p.id = m.person_id order by o.id"
        ).fetchall()
    assert total == 1500 + 60  # a day of generated history, then the live requests
    assert live == 60  # the history ends minutes before the run
    for (_, email, password_hash), (expected_email, password, _) in zip(
        orgs, DEMO_ORGS.values(), strict=True
    ):
        assert email == expected_email and verify_password(password, password_hash)
    datasette = make_datasette(db_path)

    async def view(name: str, actor: dict) -> list:
        cookies = {"ds_actor": datasette.sign({"a": actor}, "actor")}
        params = {}
        if name == "request":  # one request's page: the organisation's latest
            with sqlite3.connect(db_path) as conn:
                [[latest]] = conn.execute(
                    "select max(id) from usage where org_id = ?", [actor["org_id"]]
                ).fetchall()
            params = {"id": str(latest)}
        response = await datasette.client.get(
            f"/llm-monitor/{name}.json", params=params, cookies=cookies
        )
        assert response.status_code == 200, response.text
        return response.json()["rows"]

    # The demo imports no provider billing figures: nothing to reconcile (still answered).
    billing_views = {"reconciliation", "admin_reconciliation"}

    async def check() -> None:
        for org_id, _, _ in orgs:
            for name in ORG_VIEWS:
                rows = await view(name, {"id": f"org:{org_id}", "org_id": org_id})
                assert rows or name in billing_views, name
        for name in ADMIN_VIEWS:
            assert await view(name, {"id": "root"}) or name in billing_views, name
        unpriced = await view("admin_unpriced_models", {"id": "root"})
        assert UNPRICED_MODEL in {row[0] for row in unpriced}

    asyncio.run(check())
