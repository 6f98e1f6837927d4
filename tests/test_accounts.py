"""Accounts through a real `llm-monitor dashboard` on 127.0.0.1 driven with httpx: the role
by route matrix over every account page and API route, the REST API's answers and errors,
its OpenAPI document, sign-up, invitations, rate limits, closed instance pages, the CLI
twins and the migration of existing logins.
"""

from __future__ import annotations

import html
import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate

from llm_monitor.dashboard import api, openapi
from llm_monitor.store.database import migrations, open_db
from tests.conftest import invoke, invoke_with_password
from tests.proxy import log_in, running_dashboard

PASSWORD = "long-password-1"
OWNER, ADMIN, VIEWER = "owner@acme.example", "admin@acme.example", "viewer@acme.example"
OTHER, INSTANCE = "owner@globex.example", "root@ops.example"
ROLES = ["anonymous", "viewer", "admin", "owner", "other", "instance"]
EMAILS = {"viewer": VIEWER, "admin": ADMIN, "owner": OWNER, "other": OTHER, "instance": INSTANCE}


def create(db: Path, name: str, email: str, *extra: str) -> dict[str, Any]:
    args = ["orgs", "create", name, "--email", email, "--password", "--json", *extra]
    result = invoke_with_password(db, PASSWORD, *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output.splitlines()[-1])


def accept(base: str, link: str, email: str, existing: bool = False) -> None:
    """Accept an invitation through its page's form: as a new person, or logged in."""
    with httpx.Client(base_url=base) as browser:
        if existing:
            assert log_in(browser, email, PASSWORD).status_code == 302
        path = link.split("127.0.0.1:8001", 1)[1]
        page = browser.get(path)
        assert page.status_code == 200, page.text
        csrf = re.search(r'name="csrftoken" value="([^"]+)"', page.text).group(1)
        form = {"csrftoken": csrf} if existing else {"email": email, "password": PASSWORD}
        form["csrftoken"] = csrf
        joined = browser.post(path, data=form)
        assert joined.status_code == 302, joined.text
        # Spent: the link works once.
        assert browser.get(path).status_code == 404


class Site:
    def __init__(self, base: str, db: Path, orgs: dict[str, Any]) -> None:
        self.base, self.db, self.orgs = base, db, orgs
        self.clients: dict[str, httpx.Client] = {"anonymous": httpx.Client(base_url=base)}
        for role, email in EMAILS.items():
            client = httpx.Client(base_url=base)
            assert log_in(client, email, PASSWORD).status_code == 302
            self.clients[role] = client

    def new_token(self, org: str = "Acme") -> int:
        made = invoke(self.db, "tokens", "create", "--org", org, "--json")
        return json.loads(made)["token_id"]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("accounts")
    db = tmp / "llm-monitor.db"
    invoke(db, "init")
    orgs = {
        "Acme": create(db, "Acme", OWNER),
        "Globex": create(db, "Globex", OTHER),
        "Ops": create(db, "Ops", INSTANCE, "--admin"),
    }
    with running_dashboard(db, tmp / "dashboard.log", extra=("--allow-signup",)) as base:
        for role, email in (("admin", ADMIN), ("viewer", VIEWER)):
            link = invoke(db, "members", "invite", "--org", "Acme", "--role", role).strip()
            accept(base, link, email)
        site = Site(base, db, orgs)
        yield site
        for client in site.clients.values():
            client.close()


def csrf_headers(client: httpx.Client) -> dict[str, str]:
    token = client.cookies.get("ds_csrftoken")
    return {"X-CSRFToken": token} if token else {}


# The matrix: for each route, the status each caller gets. "other" is Globex's owner;
# "instance" is the owner of Ops, an admin organisation.
PAGES = {
    "/-/account/tokens": [302, 200, 200, 200, 200, 200],
    "/-/account/members": [302, 200, 200, 200, 200, 200],
    "/-/account/audit": [302, 403, 200, 200, 200, 200],
    "/-/account/settings": [302, 403, 403, 200, 200, 200],
    "/-/signup": [200, 200, 200, 200, 200, 200],
    "/api/stats/summary": [401, 200, 200, 200, 200, 200],
    "/api/stats/timeline": [401, 200, 200, 200, 200, 200],
    "/api/stats/by-model": [401, 200, 200, 200, 200, 200],
    "/api/tokens": [401, 200, 200, 200, 200, 200],
    "/api/openapi.json": [200, 200, 200, 200, 200, 200],
    "/-/databases.json": [403, 403, 403, 403, 403, 200],
    "/-/threads.json": [403, 403, 403, 403, 403, 200],
    "/-/plugins.json": [403, 403, 403, 403, 403, 200],
    "/-/versions.json": [403, 403, 403, 403, 403, 200],
    "/-/metadata.json": [403, 403, 403, 403, 403, 200],
    "/-/settings.json": [403, 403, 403, 403, 403, 200],
}


def test_every_route_answers_each_role_as_the_matrix_says(site: Site) -> None:
    acme_token = site.orgs["Acme"]["token_id"]
    found = {}
    for path in PAGES:
        found[path] = [site.clients[role].get(path).status_code for role in ROLES]
    # Revoking: the confirmation page of one of Acme's tokens.
    revoke = f"/-/account/tokens/revoke?id={acme_token}"
    found[revoke] = [site.clients[role].get(revoke).status_code for role in ROLES]
    expected = {**PAGES, revoke: [302, 403, 200, 200, 404, 404]}
    assert found == expected


def test_writes_by_role(site: Site) -> None:
    """POST and DELETE /api/tokens, and the pages' forms, for each caller."""
    created = {}
    for role in ROLES:
        client = site.clients[role]
        response = client.post(
            "/api/tokens", json={"name": f"by-{role}"}, headers=csrf_headers(client)
        )
        created[role] = response.status_code
        if response.status_code == 201:
            assert response.json()["token"].startswith("mon_")
    assert created == {
        "anonymous": 401,
        "viewer": 403,
        "admin": 201,
        "owner": 201,
        "other": 201,
        "instance": 201,
    }
    deleted = {}
    for role in ROLES:
        token_id = site.new_token()
        client = site.clients[role]
        response = client.delete(f"/api/tokens?id={token_id}", headers=csrf_headers(client))
        deleted[role] = response.status_code
    assert deleted == {
        "anonymous": 401,
        "viewer": 403,
        "admin": 200,
        "owner": 200,
        "other": 404,  # another organisation's token is no token to them
        "instance": 404,
    }
    # The viewer's forms are refused too, not only hidden.
    viewer = site.clients["viewer"]
    form = {"csrftoken": viewer.cookies["ds_csrftoken"], "label": "x"}
    assert viewer.post("/-/account/tokens", data=form).status_code == 403
    invite = {"csrftoken": viewer.cookies["ds_csrftoken"], "action": "invite", "role": "admin"}
    assert viewer.post("/-/account/members", data=invite).status_code == 403
    # An admin cannot make an owner, nor touch one.
    admin = site.clients["admin"]
    owner_id = next(
        r[0]
        for r in sqlite3.connect(site.db).execute("select id from people where email = ?", [OWNER])
    )
    demote = {
        "csrftoken": admin.cookies["ds_csrftoken"],
        "action": "set-role",
        "person": str(owner_id),
        "role": "viewer",
    }
    assert admin.post("/-/account/members", data=demote).status_code == 403


def test_no_route_shows_another_organisations_data(site: Site) -> None:
    acme = {t["prefix"] for t in site.clients["owner"].get("/api/tokens").json()["tokens"]}
    globex = {t["prefix"] for t in site.clients["other"].get("/api/tokens").json()["tokens"]}
    assert acme and globex and not acme & globex
    for path in ["/-/account/tokens", "/-/account/members", "/-/account/audit", "/api/tokens"]:
        text = site.clients["other"].get(path).text
        assert not any(prefix in text for prefix in acme), path
        assert OWNER not in text and VIEWER not in text, path
    summary = site.clients["other"].get("/api/stats/summary")
    assert summary.json()["org"] == "Globex"


def test_api_errors_are_json_with_the_right_status(site: Site) -> None:
    owner = site.clients["owner"]
    bad = owner.get("/api/stats/summary", params={"period": "year"})
    assert bad.status_code == 400
    assert bad.json() == {
        "ok": False,
        "error": "period must be one of day, week, month; got 'year'",
        "status": 400,
        "parameter": "period",
    }
    bad_date = owner.get("/api/stats/timeline", params={"from": "2026-13-01"})
    assert bad_date.status_code == 400 and bad_date.json()["parameter"] == "from"
    too_long = owner.get(
        "/api/stats/timeline",
        params={"from": "2025-01-01", "to": "2025-12-31", "granularity": "hour"},
    )
    assert too_long.status_code == 400 and "at most 1,000 buckets" in too_long.json()["error"]
    unknown = owner.get("/api/stats/by-model", params={"granularity": "day"})
    assert unknown.status_code == 400 and unknown.json()["parameter"] == "granularity"
    headers = csrf_headers(owner)
    for body, parameter in [(b"not json", "body"), (b"[1]", "body"), (b'{"name": 3}', "name")]:
        response = owner.post(
            "/api/tokens", content=body, headers={**headers, "content-type": "application/json"}
        )
        assert response.status_code == 400 and response.json()["parameter"] == parameter
    for wrong in ["abc", "", "-1"]:
        response = owner.delete(f"/api/tokens?id={wrong}", headers=headers)
        assert response.status_code == 400 and response.json()["parameter"] == "id"
    assert owner.delete("/api/tokens?id=999999", headers=headers).status_code == 404
    assert owner.put("/api/tokens", headers=headers).status_code == 405
    assert owner.get("/api/nothing").status_code == 404
    # A session's POST without the CSRF token is refused.
    assert owner.post("/api/tokens", json={"name": "x"}).status_code == 403
    # Credentials: missing, unknown, revoked.
    anonymous = httpx.get(f"{site.base}/api/tokens")
    assert anonymous.status_code == 401 and anonymous.json()["error"].startswith("missing")
    for token in ["dash_" + "x" * 43, "mon_" + "y" * 43]:
        answer = httpx.get(f"{site.base}/api/tokens", headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 401 and answer.json()["error"] == "invalid token"


def test_api_with_a_dashboard_token(site: Site) -> None:
    """The stats are the dashboard views' rows; an admin token creates and revokes."""
    made = invoke(
        site.db, "dashboard-token", "create", "--org", "Acme", "--role", "admin", "--json"
    )
    bearer = {"Authorization": f"Bearer {json.loads(made)['token']}"}
    with httpx.Client(base_url=site.base, headers=bearer) as client:
        summary = client.get("/api/stats/summary", params={"period": "day"}).json()
        assert summary["org"] == "Acme" and summary["parameters"] == {"period": "day"}
        assert [row["metric"] for row in summary["rows"]][:2] == ["requests", "cost_usd"]
        timeline = client.get("/api/stats/timeline", params={"granularity": "day"}).json()
        assert len(timeline["rows"]) == 30 and all(r["requests"] == 0 for r in timeline["rows"])
        assert client.get("/api/stats/by-model").json()["rows"] == []
        created = client.post("/api/tokens", json={"name": "  billing  "})
        assert created.status_code == 201 and created.json()["name"] == "billing"
        listed = client.get("/api/tokens").json()["tokens"]
        mine = next(t for t in listed if t["id"] == created.json()["id"])
        assert mine["label"] == "billing" and mine["created_by"].startswith("token:")
        assert mine["requests_30d"] == 0 and mine["cost_usd_30d"] == 0
        assert created.json()["token"] not in json.dumps(listed)
        gone = client.delete(f"/api/tokens?id={mine['id']}")
        assert gone.status_code == 200 and gone.json()["message"] == f"revoked token {mine['id']}"
        again = client.delete(f"/api/tokens?id={mine['id']}")
        assert "already revoked" in again.json()["message"]
    viewer_token = json.loads(
        invoke(site.db, "dashboard-token", "create", "--org", "Acme", "--json")
    )
    refused = httpx.post(
        f"{site.base}/api/tokens",
        json={"name": "x"},
        headers={"Authorization": f"Bearer {viewer_token['token']}"},
    )
    assert refused.status_code == 403 and "admin role" in refused.json()["error"]


def test_the_openapi_document_validates_and_lists_every_route() -> None:
    document = openapi.document()
    validate(document)
    listed = {(path, method.upper()) for path, item in document["paths"].items() for method in item}
    routes = set()
    for pattern, _ in api.ROUTES:
        if pattern == r"^/api/.*$":
            continue
        kinds = re.search(r"\(\?P<kind>([^)]+)\)", pattern)
        paths = (
            [pattern.replace(kinds.group(0), k) for k in kinds.group(1).split("|")]
            if kinds
            else [pattern]
        )
        for path in paths:
            path = path.strip("^$").replace("\\.", ".")
            methods = ["GET", "POST", "DELETE"] if path == "/api/tokens" else ["GET"]
            routes |= {(path, m) for m in methods}
    assert listed == routes


def test_audit_log_records_who_did_what_from_where(site: Site) -> None:
    events = site.clients["owner"].get("/-/account/audit").text
    for action in ["org.create", "token.create", "member.join", "login", "invitation.create"]:
        assert f">{action}<" in events, action
    assert "127.0.0.1" in events and ADMIN in events


def test_signup_shows_the_token_once_and_never_says_whose_email(tmp_path: Path) -> None:
    db = tmp_path / "llm-monitor.db"
    invoke(db, "init")
    create(db, "Acme", OWNER)
    with running_dashboard(db, tmp_path / "off.log") as base:
        assert httpx.get(f"{base}/-/signup").status_code == 404  # off by default
    with (
        running_dashboard(db, tmp_path / "on.log", extra=("--allow-signup",)) as base,
        httpx.Client(base_url=base) as browser,
    ):
        page = browser.get("/-/signup")
        csrf = re.search(r'name="csrftoken" value="([^"]+)"', page.text).group(1)

        def sign_up(name: str, email: str, password: str = PASSWORD) -> httpx.Response:
            form = {"name": name, "email": email, "password": password, "csrftoken": csrf}
            return browser.post("/-/signup", data=form)

        taken = sign_up("Initech", OWNER.upper())
        assert taken.status_code == 400 and "cannot use this email" in taken.text
        assert "Acme" not in taken.text and PASSWORD not in taken.text
        assert sign_up("Initech", "not-an-email").status_code == 400
        assert "at least 8 characters" in sign_up("Initech", "new@i.example", "short").text
        made = sign_up("Initech", "new@i.example")
        assert made.status_code == 201
        token = re.search(r'id="lm-new-token"[^>]*>(mon_[\w-]+)<', made.text).group(1)
        shown = html.unescape(made.text)
        assert f'"X-Monitor-Token": "{token}"' in shown  # the SDK snippets
        assert "http://127.0.0.1:8080/v1" in shown and "http://127.0.0.1:8081" in shown
        # Logged in as the new owner; the token is listed by prefix only from now on.
        tokens = browser.get("/-/account/tokens")
        assert tokens.status_code == 200 and token not in tokens.text and token[:10] in tokens.text
        assert browser.get("/api/tokens").json()["org"] == "Initech"
        # The sixth sign-up from one address within the hour: 429 with Retry-After.
        statuses = [sign_up(f"Org {i}", f"x{i}@i.example").status_code for i in range(2)]
        assert statuses == [201, 429]
        assert int(sign_up("Late", "late@i.example").headers["Retry-After"]) > 0


def test_logins_are_rate_limited_per_account_and_per_address(tmp_path: Path) -> None:
    db = tmp_path / "llm-monitor.db"
    invoke(db, "init")
    create(db, "Acme", OWNER)
    with (
        running_dashboard(db, tmp_path / "dashboard.log") as base,
        httpx.Client(base_url=base) as browser,
    ):
        statuses = [log_in(browser, OWNER, "wrong-password").status_code for _ in range(12)]
        assert statuses == [401] * 5 + [429] * 7
        limited = log_in(browser, OWNER, PASSWORD)  # even the right password, for now
        assert limited.status_code == 429 and 0 < int(limited.headers["Retry-After"]) <= 900
        # Other accounts from the same address still log in, until the address's limit.
        others = [
            log_in(browser, f"u{i}@x.example", "wrong-password").status_code for i in range(16)
        ]
        assert others == [401] * 15 + [429]
    audit = sqlite3.connect(db).execute(
        "select count(*) from audit_log where action = 'login.failed'"
    )
    assert audit.fetchone()[0] == 5


def test_removing_a_member_or_changing_a_role_takes_effect_on_the_next_request(
    tmp_path: Path,
) -> None:
    db = tmp_path / "llm-monitor.db"
    invoke(db, "init")
    create(db, "Acme", OWNER)
    create(db, "Globex", OTHER)
    with running_dashboard(db, tmp_path / "dashboard.log") as base:
        accept(base, invoke(db, "members", "invite", "--org", "Acme").strip(), VIEWER)
        # One person in two organisations: switch between them.
        accept(base, invoke(db, "members", "invite", "--org", "Globex").strip(), OWNER, True)
        with httpx.Client(base_url=base) as person:
            log_in(person, VIEWER, PASSWORD)
            assert person.get("/api/tokens").json()["org"] == "Acme"
            assert (
                person.post(
                    "/api/tokens", json={"name": "x"}, headers=csrf_headers(person)
                ).status_code
                == 403
            )
            invoke(db, "members", "set-role", "--org", "Acme", VIEWER, "admin")
            assert (
                person.post(
                    "/api/tokens", json={"name": "x"}, headers=csrf_headers(person)
                ).status_code
                == 201
            )
            invoke(db, "members", "remove", "--org", "Acme", VIEWER)
            assert person.get("/api/tokens").status_code == 401
        with httpx.Client(base_url=base) as owner:
            log_in(owner, OWNER, PASSWORD)
            globex_id = str(json.loads(invoke(db, "orgs", "list", "--json"))[1]["id"])
            switched = owner.post(
                "/-/account/switch",
                data={"org_id": globex_id, "csrftoken": owner.cookies["ds_csrftoken"]},
            )
            assert switched.status_code == 302
            assert owner.get("/api/tokens").json()["org"] == "Globex"
            assert owner.get("/-/account/settings").status_code == 403  # a viewer there
    # The last owner stays.
    last = invoke_with_password(db, "", "members", "remove", "--org", "Acme", OWNER)
    assert last.exit_code == 1 and "keeps one owner" in last.output


def test_cli_twins_rename_set_email_delete(tmp_path: Path) -> None:
    db = tmp_path / "llm-monitor.db"
    invoke(db, "init")
    acme = create(db, "Acme", OWNER)
    create(db, "Globex", OTHER)
    assert "renamed to 'Acme Corp'" in invoke(db, "orgs", "rename", "Acme", "Acme Corp")
    taken = invoke_with_password(db, "", "orgs", "set-email", "Acme Corp", OTHER)
    assert taken.exit_code == 1 and "cannot use this email" in taken.output
    invoke(db, "orgs", "set-email", "Acme Corp", "new@acme.example")
    with (
        running_dashboard(db, tmp_path / "dashboard.log") as base,
        httpx.Client(base_url=base) as c,
    ):
        assert log_in(c, OWNER, PASSWORD).status_code == 401
        assert log_in(c, "new@acme.example", PASSWORD).status_code == 302
        assert c.get("/api/tokens").json()["org"] == "Acme Corp"
        invoke(db, "orgs", "delete", "Acme Corp", "--yes")
        assert c.get("/api/tokens").status_code == 401  # the session ended with it
    conn = sqlite3.connect(db)
    assert conn.execute(
        "select count(*) from monitor_tokens where org_id = ? and revoked_at is null",
        [acme["org_id"]],
    ).fetchone() == (0,)
    assert "Acme Corp" not in invoke(db, "members", "list", "--org", "Globex")
    assert invoke_with_password(db, "", "members", "list", "--org", "Acme Corp").exit_code == 1


def test_the_migration_makes_each_login_its_organisations_owner(tmp_path: Path) -> None:
    """A database from before people: two organisations once shared a login email (only the
    first one's password worked); each login becomes a person, owner of its organisation."""
    db_path = tmp_path / "llm-monitor.db"
    db = open_db(db_path, migrate=False)
    migrations.apply(db, stop_before="m008_members")
    rows = [
        (1, "Acme", "a@x.example", "scrypt$acme"),
        (2, "Initech", "A@X.example", "scrypt$other"),
        (3, "Globex", "g@x.example", None),
        (4, "Hooli", "a@x.example", "scrypt$acme"),
    ]
    for org_id, name, email, password_hash in rows:
        db["orgs"].insert(
            {
                "id": org_id,
                "name": name,
                "email": email,
                "created_at": "2026-01-01T00:00:00.000Z",
                "password_hash": password_hash,
            }
        )
    db.conn.commit()
    db.conn.close()
    db = open_db(db_path)
    people = list(db.query("select id, email, password_hash from people"))
    assert [(p["email"], p["password_hash"]) for p in people] == [("a@x.example", "scrypt$acme")]
    members = list(db.query("select org_id, person_id, role from members order by org_id"))
    assert members == [
        {"org_id": 1, "person_id": people[0]["id"], "role": "owner"},
        {"org_id": 4, "person_id": people[0]["id"], "role": "owner"},
    ]
    assert db.execute("select count(*) from orgs where password_hash is not null").fetchone() == (
        0,
    )
