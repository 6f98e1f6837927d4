"""The budgets page (`/-/account/budgets`): an organisation's budgets and rate limits,
with their status this period; its admins create, change and remove them, its viewers
read them. The same domain functions as `llm-monitor budgets` and `limits`
(`llm_monitor.controls.budgets`), on Datasette's write thread; each change is in the
organisation's audit log. A refused value is drawn again beside its field.
"""

from __future__ import annotations

import re
from typing import Any

from datasette.app import Datasette
from datasette.utils.asgi import Request, Response
from sqlite_utils import Database

from llm_monitor.accounts import audit
from llm_monitor.accounts.audit import Who
from llm_monitor.accounts.members import allows
from llm_monitor.controls import budgets, periods
from llm_monitor.dashboard import auth
from llm_monitor.dashboard.api import read, write
from llm_monitor.dashboard.pages import form, member_actor, page, render
from llm_monitor.errors import Conflict, DomainError, Forbidden, Invalid, NotFound
from llm_monitor.inert import ascii_int

PATH = "/-/account/budgets"
_FLAG = re.compile(r"^--[a-z-]+ ")


def beside(error: DomainError) -> str:
    """A domain message as a field's error: `--usd must be...` -> `Must be...`."""
    text = _FLAG.sub("", str(error), count=1)
    return text[:1].upper() + text[1:]


class FieldErrors(Exception):
    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(errors.values()))
        self.errors = errors


def _check(errors: dict[str, str], name: str, check: Any, *args: Any) -> Any:
    try:
        return check(*args)
    except (Invalid, NotFound) as e:
        errors[name] = beside(e)
        return None


def create_budget(db: Database, org_id: int, values: dict[str, str], who: Who) -> int:
    """A new budget from the form's fields, each checked on its own so that each error
    stands beside its field; then `budgets.set_budget`, as the CLI."""
    errors: dict[str, str] = {}
    scope = values.get("scope", "org")
    value = values.get("value", "").strip() or None
    _check(
        errors,
        "value" if scope in budgets.SCOPES else "scope",
        budgets.check_scope,
        db,
        org_id,
        scope,
        value,
    )
    period = values.get("period", "")
    if period == "range":
        found = _check(errors, "range", periods.parse_range, values.get("range", ""))
        period = f"range:{found[0]}..{found[1]}" if found else period
    elif period not in ("day", "week", "month"):
        errors["period"] = "Choose day, week, month or a date range"
    _check(errors, "usd", budgets.parse_usd, values.get("usd", ""))
    _check(errors, "alert_at", budgets.parse_thresholds, values.get("alert_at") or None)
    kind = values.get("kind", "hard")
    if kind not in ("hard", "soft"):
        errors["kind"] = "Choose hard or soft"
    unpriced = values.get("unpriced", "refuse")
    if unpriced not in ("refuse", "allow"):
        errors["unpriced"] = "Choose refuse or allow"
    if errors:
        raise FieldErrors(errors)
    try:
        budget_id = budgets.set_budget(
            db,
            org_id,
            scope=scope,
            scope_value=value,
            period=period,
            usd=values["usd"],
            hard=kind == "hard",
            thresholds=values.get("alert_at") or None,
            on_unpriced=unpriced,
        )
    except Conflict as e:
        raise FieldErrors({"period": str(e).replace(" with --replace", " below")}) from None
    audit.record(db, org_id, who, "budget.set", f"#{budget_id}: ${values['usd']}")
    return budget_id


def edit_budget(db: Database, org_id: int, values: dict[str, str], who: Who) -> None:
    budget_id = ascii_int(values.get("id", "")) or 0
    prefix = f"budget-{budget_id}:"
    errors: dict[str, str] = {}
    _check(errors, prefix + "usd", budgets.parse_usd, values.get("usd", ""))
    _check(errors, prefix + "alert_at", budgets.parse_thresholds, values.get("alert_at") or None)
    if errors:
        raise FieldErrors(errors)
    budgets.change_budget(
        db,
        budget_id,
        usd=values["usd"],
        thresholds=values.get("alert_at") or None,
        org_id=org_id,
    )
    audit.record(db, org_id, who, "budget.change", f"#{budget_id}: ${values['usd']}")


def remove_budget(db: Database, org_id: int, values: dict[str, str], who: Who) -> None:
    budget_id = ascii_int(values.get("id", "")) or 0
    budgets.remove_budget(db, budget_id, org_id=org_id)
    audit.record(db, org_id, who, "budget.remove", f"#{budget_id}")


def set_limit(db: Database, org_id: int, values: dict[str, str], who: Who) -> int:
    errors: dict[str, str] = {}
    scope = values.get("limit_scope", "org")
    value = values.get("limit_token", "").strip() or None
    field = "limit_token" if scope in budgets.LIMIT_SCOPES else "limit_scope"
    _check(errors, field, budgets.check_scope, db, org_id, scope, value, budgets.LIMIT_SCOPES)
    amounts: dict[str, int | None] = {}
    for name in ("rpm", "tpm"):
        text = values.get(name, "").strip()
        number = ascii_int(text) if text else None
        if text and (number is None or not 1 <= number <= 10**9):
            errors[name] = "A whole number from 1 to 1000000000, or empty"
        amounts[name] = number
    if not errors and amounts["rpm"] is None and amounts["tpm"] is None:
        errors["rpm"] = "Give requests per minute, tokens per minute or both"
    if errors:
        raise FieldErrors(errors)
    limit_id = budgets.set_limit(
        db, org_id, scope=scope, scope_value=value, rpm=amounts["rpm"], tpm=amounts["tpm"]
    )
    audit.record(
        db, org_id, who, "limit.set", f"#{limit_id}: rpm {amounts['rpm']}, tpm {amounts['tpm']}"
    )
    return limit_id


def remove_limit(db: Database, org_id: int, values: dict[str, str], who: Who) -> None:
    limit_id = ascii_int(values.get("id", "")) or 0
    budgets.remove_limit(db, limit_id, org_id=org_id)
    audit.record(db, org_id, who, "limit.remove", f"#{limit_id}")


ACTIONS = {
    "create": create_budget,
    "edit": edit_budget,
    "remove": remove_budget,
    "set-limit": set_limit,
    "remove-limit": remove_limit,
}


def status(db: Database, org_id: int) -> list[dict[str, Any]]:
    """Each of the organisation's budgets as `budgets list` reports it, with what the
    forms show: its alert thresholds and how much of it is used."""
    settings = {b.id: b for b in budgets.load_budgets(db) if b.org_id == org_id}
    rows = budgets.budget_status(db, org_id)
    for row in rows:
        budget = settings[row["id"]]
        row["alert_at"] = ",".join(map(str, budget.thresholds))
        row["amount"] = budget.amount_usd
        used = max(row["spent_usd"], 0) + max(row["reserved_usd"], 0)
        row["used_pct"] = round(100 * used / row["limit_usd"], 1) if row["limit_usd"] else 0
        row["spent_pct"] = (
            min(round(100 * row["spent_usd"] / row["limit_usd"], 1), 100) if row["limit_usd"] else 0
        )
        row["reserved_pct"] = max(min(row["used_pct"], 100) - row["spent_pct"], 0)
    return rows


@page
async def budgets_page(datasette: Datasette, request: Request) -> Response:
    actor = member_actor(request)
    org_id = actor["org_id"]
    errors: dict[str, str] = {}
    values: dict[str, str] = {}
    if request.method == "POST":
        values = await form(request)
        action = ACTIONS.get(values.get("action", ""))
        try:
            if not allows(actor["role"], "admin"):
                raise Forbidden(f"changing budgets needs the admin role; you are {actor['role']}")
            if action is None:
                raise Invalid("unknown action")
            await write(datasette, action, org_id, values, auth.who(request))
        except Forbidden as e:
            return Response.text(str(e), status=403)
        except FieldErrors as e:
            errors = e.errors
        except DomainError as e:
            errors = {"form": str(e)}
        else:
            return Response.redirect(PATH)
    context = {
        "budgets": await read(datasette, status, org_id),
        "limits": await read(datasette, budgets.list_limits, org_id),
        "errors": errors,
        "values": values,
        "lm_current": "budgets",
    }
    return await render(
        datasette, request, "account_budgets.html", context, status=400 if errors else 200
    )


def extra_template_vars(template: str, request: Request | None, datasette: Datasette) -> Any:
    """The overview's budgets: the logged-in organisation's, with their status."""
    if template != "index.html" or request is None:
        return None

    async def overview() -> dict[str, Any]:
        org_id = (request.actor or {}).get("org_id")
        if not isinstance(org_id, int):
            return {"lm_budgets": []}
        return {"lm_budgets": await read(datasette, status, org_id)}

    return overview


def register_routes() -> list[tuple[str, Any]]:
    return [(rf"^{PATH}$", budgets_page)]
