from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from click.testing import CliRunner, Result

from llm_monitor.cli import cli
from llm_monitor.usage import UsageRecord
from tests.proxy import Proxy, running_proxy
from tests.replay import ReplayServer

# A provider key the proxy must pass on and never store or log.
API_KEY = "sk-proj-NEVER-STORE-ME-7f3a9c1e5b"


def invoke(db_path: Path, *args: str) -> str:
    """Run the real CLI in-process; fail the test with its output if it fails."""
    result = CliRunner().invoke(cli, ["--db", str(db_path), *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def set_budget(db_path: Path, usd: str, *extra: str, period: str = "month") -> str:
    """`budgets set --org Acme --period PERIOD --usd USD [EXTRA...]` through the real CLI."""
    return invoke(
        db_path, "budgets", "set", "--org", "Acme", "--period", period, "--usd", usd, *extra
    )


def invoke_with_password(db_path: Path, password: str, *args: str) -> Result:
    """Run the real CLI with `password` typed at its prompt twice; the caller checks the
    result (some tests expect a refusal)."""
    return CliRunner().invoke(cli, ["--db", str(db_path), *args], input=f"{password}\n{password}\n")


def new_org(db_path: Path, name: str) -> str:
    """Create an organisation and return its first monitor token."""
    return json.loads(
        invoke(db_path, "orgs", "create", name, "--email", "ops@x.example", "--json")
    )["token"]


def usage_record(**fields: object) -> UsageRecord:
    """A valid usage row with plain defaults; tests name only what they are about."""
    values = {
        "ts": "2026-06-01T00:00:00.000Z",
        "org_id": 1,
        "token_id": 1,
        "provider": "openai",
        "method": "POST",
        "path": "/v1/chat/completions",
        "outcome": "ok",
        "status": 200,
        **fields,
    }
    return UsageRecord.model_validate(values)


@pytest.fixture
def fresh_db(tmp_path: Path) -> Path:
    db_path = tmp_path / "llm-monitor.db"
    invoke(db_path, "init")
    return db_path


@pytest.fixture(scope="session")
def upstream() -> Iterator[ReplayServer]:
    with ReplayServer() as server:
        yield server


@pytest.fixture(autouse=True)
def _clean_upstream(request: pytest.FixtureRequest) -> None:
    if "upstream" in request.fixturenames:
        request.getfixturevalue("upstream").reset()


@pytest.fixture(scope="session")
def shared_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db_path = tmp_path_factory.mktemp("shared") / "llm-monitor.db"
    invoke(db_path, "init")
    return db_path


@pytest.fixture(scope="session")
def token(shared_db: Path) -> str:
    return new_org(shared_db, "Acme")


@pytest.fixture(scope="session")
def proxy(shared_db: Path, upstream: ReplayServer, token: str) -> Iterator[Proxy]:
    with running_proxy(shared_db, f"http://127.0.0.1:{upstream.port}") as p:
        yield p


@pytest.fixture
def client(proxy: Proxy, token: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=proxy.base_url,
        api_key=API_KEY,
        max_retries=0,
        default_headers={"X-Monitor-Token": token},
        timeout=20,
    )
