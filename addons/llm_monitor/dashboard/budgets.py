"""The budgets page (`/-/account/budgets`): an organisation's budgets and rate limits,
with their status this period, and where its alerts go; its admins create, change and
remove them, its viewers read them. The same domain functions as `llm-monitor budgets`,
`limits` and `notify` (`llm_monitor.controls`), on Datasette's write thread; each change
is in the organisation's audit log. A refused value is drawn again beside its field,
except a notification URL: it holds a secret, so it is never drawn again, only its
redacted form is shown, and it is kept where the CLI keeps it (`controls.notify`'s file,
never the database the dashboard serves).
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from datasette.app import Datasette
from datasette.utils.asgi import Request, Response
from sqlite_utils import Database

from llm_monitor.accounts import audit, orgs
from llm_monitor.accounts.audit import Who
from llm_monitor.accounts.members import allows
from llm_monitor.accounts.passwords import MAX_LENGTH
from llm_monitor.controls import budgets, periods
from llm_monitor.controls.notify import NotifyFile, notify_path, redacted, send
from llm_monitor.dashboard import auth, usage_db
from llm_monitor.dashboard.api import read, write
from llm_monitor.dashboard.pages import member_actor, page, render
from llm_monitor.errors import Conflict, DomainError, Forbidden, Invalid, NotFound
from llm_monitor.inert import ascii_int

logger = logging.getLogger(__name__)

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


def add_notify_url(
    db: Database, org_id: int, notify: NotifyFile, values: dict[str, str], who: Who
) -> int:
    """`llm-monitor notify add`: checked by Apprise (not contacted); the audit log gets its
    redacted form."""
    url = values.get("notify_url", "").strip()
    try:
        target_id = notify.add(org_id, url)
    except (Invalid, Conflict) as e:
        raise FieldErrors({"notify_url": beside(e)}) from None
    audit.record(db, org_id, who, "notify.add", f"#{target_id}: {redacted(url)}")
    return target_id


def remove_notify_url(
    db: Database, org_id: int, notify: NotifyFile, values: dict[str, str], who: Who
) -> None:
    target_id = ascii_int(values.get("id", "")) or 0
    try:
        notify.remove(target_id, org_id)
    except NotFound:
        raise NotFound(f"no notification URL {target_id} in this organisation") from None
    audit.record(db, org_id, who, "notify.remove", f"#{target_id}")


def send_tests(notify: NotifyFile, org_id: int, org_name: str) -> list[str]:
    """`llm-monitor notify test`: a test message to each URL, now (blocking: off the
    event loop). One line each, redacted: `1 json://127.0.0.1:9/…: sent`."""
    targets = notify.targets(org_id)
    if not targets:
        raise Invalid("this organisation has no notification URLs yet")
    lines = []
    for target in targets:
        error = send(target, "LLM Monitor: test", f"A test notification for {org_name}.")
        lines.append(f"{target.id} {target.shown}: {'sent' if error is None else error}")
    return lines


NOTIFY_ACTIONS = {"notify-add": add_notify_url, "notify-remove": remove_notify_url}


NOTIFY_BY_OPERATOR = (
    "notification URLs are set by the operator here (`llm-monitor notify add`); "
    "`dashboard --notify-urls` lets admins set them"
)


def notify_urls_here(datasette: Datasette) -> bool:
    """Whether admins may change and test notification URLs on the dashboard: the server
    sends to any address they give, so the operator must allow it (`--notify-urls`)."""
    return bool((datasette.plugin_config("llm-monitor") or {}).get("notify_urls"))


def notify_file(datasette: Datasette) -> NotifyFile:
    return NotifyFile(notify_path(usage_db(datasette).path))


def notify_listing(datasette: Datasette, org_id: int) -> tuple[list[dict[str, Any]], str | None]:
    """The organisation's URLs, redacted, or why they cannot be read (a file others may
    read is refused, as by the CLI)."""
    try:
        return notify_file(datasette).listing({}, org_id), None
    except DomainError as e:  # the operator's to fix; the file's path is not a tenant's
        logger.warning("llm-monitor: notification URLs not read: %s", e)
        return [], "The notification URLs cannot be read now; the operator has been told."


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
    results: list[str] = []
    if request.method == "POST":
        posted = await request.post_vars()
        values = {k: v[:MAX_LENGTH] for k, v in posted.items()}
        # Whole (Apprise refuses one over 2,000 characters): never cut and then stored.
        values["notify_url"] = posted.get("notify_url", "")[: 2 * MAX_LENGTH + 1]
        name = values.get("action", "")
        action = ACTIONS.get(name)
        notify_action = NOTIFY_ACTIONS.get(name)
        try:
            if not allows(actor["role"], "admin"):
                raise Forbidden(f"changing budgets needs the admin role; you are {actor['role']}")
            if (name == "notify-test" or notify_action is not None) and not notify_urls_here(
                datasette
            ):
                raise Forbidden(NOTIFY_BY_OPERATOR)
            if name == "notify-test":
                org_name = (await read(datasette, orgs.org_row, org_id))["name"]
                results = await asyncio.to_thread(
                    send_tests, notify_file(datasette), org_id, org_name
                )
            elif notify_action is not None:
                notify = notify_file(datasette)
                await write(datasette, notify_action, org_id, notify, values, auth.who(request))
            elif action is None:
                raise Invalid("unknown action")
            else:
                await write(datasette, action, org_id, values, auth.who(request))
        except Forbidden as e:
            return Response.text(str(e), status=403)
        except FieldErrors as e:
            errors = e.errors
        except DomainError as e:
            errors = {"form": str(e)}
        else:
            if not results:
                return Response.redirect(PATH)
    values.pop("notify_url", None)  # a secret: never drawn again, even beside its error
    targets, notify_error = notify_listing(datasette, org_id)
    context = {
        "budgets": await read(datasette, status, org_id),
        "limits": await read(datasette, budgets.list_limits, org_id),
        "notify_targets": targets,
        "notify_error": notify_error,
        "notify_results": results,
        "notify_editable": notify_urls_here(datasette),
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
