"""The dashboard's budgets and alerts views: each organisation sees its own, with the
spend of the current period as `budgets list` reports it."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from llm_monitor.controls.alerts import evaluate
from llm_monitor.store.database import open_db
from tests.conftest import invoke, set_budget
from tests.test_dashboard import Site


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    site = Site(tmp_path_factory.mktemp("controls-dashboard") / "llm-monitor.db")
    yield site
    site.loop.close()


def test_budgets_and_alerts_views(site: Site) -> None:
    db = site.db_path
    set_budget(db, "0.01", "--soft")
    invoke(db, "budgets", "set", "--org", "Acme", "--period", "day", "--usd", "1000")
    invoke(db, "budgets", "set", "--org", "Globex", "--period", "week", "--usd", "5")
    expected = {b["id"]: b for b in json.loads(invoke(db, "budgets", "list", "--json"))}
    rows = site.view("budgets", site.actor("Acme"))
    assert {r["id"] for r in rows} == {1, 2}  # never Globex's
    for row in rows:
        status = expected[row["id"]]
        assert row["limit_usd"] == status["limit_usd"]
        assert row["spent_usd"] == pytest.approx(status["spent_usd"], abs=1e-9)
        assert row["resets_at"].replace("Z", ".000Z") == status["resets_at"]
    assert rows[0]["budget"] == "org, month (soft)" and rows[0]["used_pct"] > 100
    evaluate(open_db(db))
    alerts = site.view("alerts", site.actor("Acme"))
    assert {a["threshold"] for a in alerts if a["kind"] == "budget"} == {"50%", "80%", "100%"}
    assert all(a["kind"] != "budget" or "Acme" in a["message"] for a in alerts)
    assert not [a for a in site.view("alerts", site.actor("Globex")) if "Acme" in a["message"]]
