"""Reconciliation end to end: real traffic through a real mitmdump for two provider keys,
the provider's own figures imported from the stand-in admin API by the real importer, and
`billing reconcile` comparing them (and the dashboard showing it)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from llm_monitor.billing import ledger
from llm_monitor.dashboard import make_datasette
from llm_monitor.store.recorder import Recorder
from tests.billing_standin import BillingStandIn
from tests.conftest import invoke, new_org, usage_record
from tests.proxy import Proxy, row_for, running_proxy
from tests.replay import ReplayServer, Reply
from tests.test_billing import ADMIN_KEYS, assert_no_key_leaked, ok, query, run

# Provider keys the services use: the proxy keeps their hints, never the keys.
KEY_A = "sk-proj-" + "A" * 40 + "1111"
KEY_B = "sk-proj-" + "B" * 40 + "2222"
ANTHROPIC_KEY = "sk-ant-api03-R2D" + "x" * 84 + "igAA"
TODAY = ledger.utc_today()
D1, D2, D3 = (TODAY - dt.timedelta(days=n) for n in (12, 11, 10))


def completion(model: str, prompt: int = 1000, output: int = 200) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hi"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": output,
                "total_tokens": prompt + output,
            },
        }
    ).encode()


def send(
    proxy: Proxy, upstream: ReplayServer, token: str, key: str, model: str, on: dt.date
) -> None:
    """One request through the proxy with `key`; its row is then moved to day `on` (the
    proxy records the time it ran: the test plays three days in one minute)."""
    reply = upstream.reply(Reply(200, completion(model)))
    client = openai.OpenAI(
        base_url=f"{proxy.url('openai')}/v1",
        api_key=key,
        max_retries=0,
        default_headers={"X-Monitor-Token": token},
    )
    client.chat.completions.create(
        model=model.rsplit("-2024", 1)[0], messages=[{"role": "user", "content": "Hi"}]
    )
    row = row_for(proxy.db_path, reply.request_id)
    with sqlite3.connect(proxy.db_path) as conn:
        conn.execute(
            "update usage set ts = ? || substr(ts, 11) where id = ?", (on.isoformat(), row["id"])
        )


def provider_figures(standin: BillingStandIn) -> None:
    """What OpenAI's admin API says: D1 matches the proxy exactly; on D2 key C, which never
    went through the proxy, spent too; on D3 the bill prices gpt-4o as OpenAI does."""
    f = standin.figures
    f.openai_projects = {
        "proj_a": [
            {"id": "key_a", "name": "search", "redacted_value": "sk-proj-...1111"},
            {"id": "key_b", "name": "batch", "redacted_value": "sk-...2222"},
        ],
        "proj_b": [{"id": "key_c", "name": "laptop", "redacted_value": "sk-...3333"}],
    }

    def usage(key: str, project: str, model: str, requests: int) -> dict:
        return {
            "model": model,
            "api_key_id": key,
            "project_id": project,
            "input_tokens": 1000 * requests,
            "input_cached_tokens": 0,
            "output_tokens": 200 * requests,
            "num_model_requests": requests,
        }

    def cost(key: str, project: str, line_item: str, value: object) -> dict:
        return {
            "amount": {"value": value, "currency": "usd"},
            "line_item": line_item,
            "project_id": project,
            "api_key_id": key,
        }

    mini, big = "gpt-4o-mini-2024-07-18", "gpt-4o-2024-08-06"
    f.openai_usage["completions"] = {
        D1: [usage("key_a", "proj_a", mini, 2), usage("key_b", "proj_a", mini, 1)],
        D2: [usage("key_a", "proj_a", mini, 1), usage("key_c", "proj_b", mini, 5)],
        D3: [usage("key_a", "proj_a", big, 1)],
    }
    # gpt-4o-mini: $0.15 in, $0.60 out per 1M; gpt-4o: $2.50 and $10.
    f.openai_costs = {
        D1: [
            cost("key_a", "proj_a", f"{mini}, input", "0.0003"),
            cost("key_a", "proj_a", f"{mini}, output", "0.00024"),
            cost("key_b", "proj_a", f"{mini}, input", 0.00015),
            cost("key_b", "proj_a", f"{mini}, output", 0.00012),
        ],
        D2: [
            cost("key_a", "proj_a", f"{mini}, input", "0.00015"),
            cost("key_a", "proj_a", f"{mini}, output", "0.00012"),
            cost("key_c", "proj_b", f"{mini}, input", "0.00075"),
            cost("key_c", "proj_b", f"{mini}, output", "0.0006"),
        ],
        D3: [
            cost("key_a", "proj_a", f"{big}, input", "0.0025"),
            cost("key_a", "proj_a", f"{big}, output", "0.002"),
        ],
    }


@pytest.fixture
def standin() -> Iterator[BillingStandIn]:
    with BillingStandIn(ADMIN_KEYS) as server:
        yield server


def by(rows: list[dict], **match: object) -> list[dict]:
    return [r for r in rows if all(r[k] == v for k, v in match.items())]


def test_reconciliation_end_to_end(
    tmp_path: Path, upstream: ReplayServer, standin: BillingStandIn
) -> None:
    db = tmp_path / "llm-monitor.db"
    invoke(db, "init")
    token = new_org(db, "Acme")
    new_org(db, "Globex")
    # A deliberately wrong price: gpt-4o at twice OpenAI's ($2.50 and $10 per 1M).
    invoke(db, "pricing", "set", "gpt-4o", "--input", "5", "--output", "20",
           "--effective-from", TODAY.isoformat())  # fmt: skip
    upstream_url = f"http://127.0.0.1:{upstream.port}"
    with running_proxy(db, upstream_url, providers=("openai", "anthropic")) as proxy:
        send(proxy, upstream, token, KEY_A, "gpt-4o-mini-2024-07-18", D1)
        send(proxy, upstream, token, KEY_A, "gpt-4o-mini-2024-07-18", D1)
        send(proxy, upstream, token, KEY_B, "gpt-4o-mini-2024-07-18", D1)
        send(proxy, upstream, token, KEY_A, "gpt-4o-mini-2024-07-18", D2)
        send(proxy, upstream, token, KEY_A, "gpt-4o-2024-08-06", D3)
        # Anthropic's hint is its partial_key_hint: the first 16 and last 4 characters.
        reply = upstream.reply(
            Reply(
                200,
                json.dumps(
                    {
                        "id": "msg_1",
                        "type": "message",
                        "role": "assistant",
                        "model": "claude-haiku-4-5-20251001",
                        "content": [{"type": "text", "text": "Hi"}],
                        "stop_reason": "end_turn",
                        "usage": {"input_tokens": 10, "output_tokens": 2},
                    }
                ).encode(),
            )
        )
        anthropic.Anthropic(
            base_url=proxy.url("anthropic"),
            api_key=ANTHROPIC_KEY,
            max_retries=0,
            default_headers={"X-Monitor-Token": token},
        ).messages.create(
            model="claude-haiku-4-5", max_tokens=5, messages=[{"role": "user", "content": "Hi"}]
        )
        assert row_for(db, reply.request_id)["key_hint"] == "sk-ant-api03-R2D...igAA"
        log = proxy.log()
    hints = query(db, "select distinct key_hint from usage where provider = 'openai'")
    assert sorted(h["key_hint"] for h in hints) == ["sk-...1111", "sk-...2222"]

    provider_figures(standin)
    imported = ok(
        db, "billing", "import", "openai", "--since", D1.isoformat(), "--base-url", standin.url
    )
    ok(db, "billing", "link", "--org", "Acme", "--provider", "openai", "--project", "proj_a")
    assert "Acme" in ok(db, "billing", "links").output

    args = ["billing", "reconcile", "--from", D1.isoformat(), "--to", D3.isoformat()]
    rows = json.loads(ok(db, *args, "--json").output)

    # D1: the provider's figures match the proxy's: capture 100%, difference 0.
    (day1,) = by(rows, day=D1.isoformat(), level="day")
    assert (day1["capture_pct"], day1["difference_usd"], day1["flags"]) == ("100.0", "0", [])
    assert (day1["proxy_cost_usd"], day1["provider_cost_usd"]) == ("0.00081", "0.00081")
    (mini1,) = by(rows, day=D1.isoformat(), level="model")
    assert (mini1["model"], mini1["proxy_input_tokens"], mini1["provider_input_tokens"]) == (
        "gpt-4o-mini",
        3000,
        3000,
    )
    assert mini1["flags"] == []
    keys1 = {r["key"]: r for r in by(rows, day=D1.isoformat(), level="key")}
    # The proxy's `sk-...1111` is the key OpenAI lists as `sk-proj-...1111`.
    assert set(keys1) == {"sk-proj-...1111", "sk-...2222"}
    assert keys1["sk-proj-...1111"]["proxy_requests"] == 2
    assert all(k["capture_pct"] == "100.0" and k["flags"] == [] for k in keys1.values())

    # D2: key C spent through no proxy: flagged as bypass, and the capture rate says so.
    (bypass,) = by(rows, day=D2.isoformat(), level="key", key="sk-...3333")
    assert bypass["proxy_requests"] == 0 and bypass["provider_cost_usd"] == "0.00135"
    assert (bypass["proxy_cost_usd"], bypass["capture_pct"]) == ("0", "0.0")
    assert bypass["flags"][0].startswith("bypass: key sk-...3333")
    (mini2,) = by(rows, day=D2.isoformat(), level="model")
    assert any("bypass" in f and "sk-...3333" in f for f in mini2["flags"])
    assert not any(f.startswith(("price", "tokens")) for f in mini2["flags"])
    (day2,) = by(rows, day=D2.isoformat(), level="day")
    assert day2["capture_pct"] == "16.7" and day2["difference_usd"] == "-0.00135"

    # D3: tokens agree, the cost does not: a price error, naming the model.
    (big3,) = by(rows, day=D3.isoformat(), level="model")
    assert big3["model"] == "gpt-4o" and big3["proxy_input_tokens"] == 1000
    assert big3["flags"] == ["price: gpt-4o costs 100.0% more through the proxy than on the bill"]
    assert big3["capture_pct"] == "200.0"

    # The readable table, and the flags under it.
    table = ok(db, *args).output
    assert "capture %" in table and "(all models)" in table and "Flags:" in table
    assert f"{D3.isoformat()} openai gpt-4o: price: gpt-4o costs 100.0% more" in table
    assert "sk-...3333" in table and "bypass" in table

    # Acme sees its linked project only: key C (project B, unlinked) is the admin's alone.
    acme = json.loads(ok(db, *args, "--org", "Acme", "--json").output)
    assert not by(acme, key="sk-...3333")
    assert by(acme, day=D2.isoformat(), level="day")[0]["capture_pct"] == "100.0"
    assert json.loads(ok(db, *args, "--org", "Globex", "--json").output) == []

    # The dashboard shows what the last reconcile kept, guarded like every view.
    datasette = make_datasette(db)
    loop = asyncio.new_event_loop()

    def view(name: str, actor: dict | None) -> httpx.Response:
        cookies = {"ds_actor": datasette.sign({"a": actor}, "actor")} if actor else None
        params = {"from": D1.isoformat(), "to": D3.isoformat(), "_shape": "objects"}
        return loop.run_until_complete(
            datasette.client.get(f"/llm-monitor/{name}.json", params=params, cookies=cookies)
        )

    org_ids = {r["name"]: r["id"] for r in query(db, "select id, name from orgs")}
    acme_actor = {"id": f"org:{org_ids['Acme']}", "org_id": org_ids["Acme"], "admin": False}
    globex_actor = {"id": f"org:{org_ids['Globex']}", "org_id": org_ids["Globex"], "admin": False}
    try:
        mine = view("reconciliation", acme_actor).json()["rows"]
        assert mine and not by(mine, key="sk-...3333")
        assert {r["day"] for r in mine} == {D1.isoformat(), D2.isoformat(), D3.isoformat()}
        assert view("reconciliation", globex_actor).json()["rows"] == []
        assert view("admin_reconciliation", acme_actor).status_code == 403
        assert view("reconciliation", None).status_code in (302, 403)
        everything = view("admin_reconciliation", {"id": "root"}).json()["rows"]
        assert by(everything, key="sk-...3333")[0]["flags"].startswith("bypass")
    finally:
        loop.close()

    # Neither the services' keys nor the admin key are anywhere.
    assert_no_key_leaked(db, imported.output, table, log)
    for key in (KEY_A, KEY_B, ANTHROPIC_KEY):
        for file in db.parent.iterdir():
            if file.is_file():
                assert key.encode() not in file.read_bytes(), file


def test_key_hints_can_be_turned_off(tmp_path: Path, upstream: ReplayServer) -> None:
    db = tmp_path / "llm-monitor.db"
    invoke(db, "init")
    token = new_org(db, "Acme")
    upstream_url = f"http://127.0.0.1:{upstream.port}"
    with running_proxy(db, upstream_url, monitor_key_hints=False) as proxy:
        reply = upstream.reply(Reply(200, completion("gpt-4o-mini-2024-07-18")))
        openai.OpenAI(
            base_url=proxy.base_url,
            api_key=KEY_A,
            max_retries=0,
            default_headers={"X-Monitor-Token": token},
        ).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}])
        row = row_for(db, reply.request_id)
    assert row["key_hint"] is None and row["input_tokens"] == 1000


def test_reconcile_refuses_a_backward_range(fresh_db: Path) -> None:
    result = run(fresh_db, "billing", "reconcile", "--from", "2026-11-02", "--to", "2026-11-01")
    assert result.exit_code != 0 and "is after" in result.output
    assert (
        "nothing to reconcile"
        in ok(fresh_db, "billing", "reconcile", "--from", "2026-11-01", "--to", "2026-11-02").output
    )


def test_anthropic_tokens_that_disagree_and_workbench_spend(
    fresh_db: Path, standin: BillingStandIn
) -> None:
    """Anthropic's usage names keys but its cost report does not. Proxied rows written by
    the real recorder: one day whose tokens agree (the price is then checked at the model
    level), one whose input tokens do not (a parsing error, no price verdict); Workbench
    usage (no key) is spend the proxy never saw."""
    from tests.test_billing import day, fill_anthropic

    new_org(fresh_db, "Acme")
    fill_anthropic(standin, range(11, 13))
    recorder = Recorder(fresh_db)
    recorder.start()
    for offset, uncached in ((12, 1012), (11, 1500)):
        recorder.submit(
            usage_record(
                ts=f"{day(offset).isoformat()}T10:00:00.000Z",
                provider="anthropic",
                path="/v1/messages",
                model="claude-sonnet-4-5",
                response_model="claude-sonnet-4-5-20250929",
                input_tokens=uncached + 300 + 300,
                cached_input_tokens=300,
                cache_write_tokens=300,
                cache_write_1h_tokens=100,
                output_tokens=50,
                key_hint="sk-ant-api03-R2D...igAA",
            )
        )
    recorder.close()
    ok(fresh_db, "billing", "import", "anthropic", "--since", day(13).isoformat(),
       "--base-url", standin.url)  # fmt: skip
    rows = json.loads(
        ok(
            fresh_db, "billing", "reconcile", "--from", day(12).isoformat(),
            "--to", day(11).isoformat(), "--json",
        ).output
    )  # fmt: skip
    agree, disagree = (
        by(rows, day=day(n).isoformat(), level="model", model="claude-sonnet-4-5")[0]
        for n in (12, 11)
    )
    assert agree["proxy_input_tokens"] == agree["provider_input_tokens"] == 1612
    # The stand-in bills $1.23455 for what the price table makes far less: a price error.
    assert [f.split(":")[0] for f in agree["flags"]] == ["price"]
    assert agree["provider_cost_usd"] == "1.23455"
    assert disagree["flags"] == ["tokens: claude-sonnet-4-5 differs (input 2100 vs 1611)"]
    (key,) = by(rows, day=day(12).isoformat(), level="key", model="claude-sonnet-4-5")
    assert key["key"] == "sk-ant-api03-R2D...igAA" and key["proxy_requests"] == 1
    assert key["provider_cost_usd"] is None  # the cost report has no keys
    (workbench,) = by(rows, day=day(12).isoformat(), level="key", key="(no key)")
    assert workbench["model"] == "claude-haiku-4-5"
    assert workbench["flags"][0].startswith("bypass: key (no key)")
