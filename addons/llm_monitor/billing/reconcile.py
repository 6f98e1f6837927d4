"""The proxy's figures against the provider's, per day, provider, model and key.

Three levels of rows:
- `day`: a provider's whole day: spend on both sides and the capture rate (proxy spend /
  provider spend), which spend around the proxy lowers;
- `model`: the same per model, with tokens; where the tokens agree, a cost more than 1% off
  the bill is a price error (the model is named); tokens that disagree are a parsing error;
- `key`: per provider key, where the provider's usage names keys (OpenAI, Anthropic): a key
  with provider spend and no proxied request is traffic that bypassed the proxy. The
  proxy's key hint (`sk-...abcd`) is matched to the provider's key list.

Only days a provider's figures cover are compared. Where both an API and an export hold a
provider's day, the API's figures are used. Provider figures belong to an organisation
through `billing link`; those without one are the instance admin's only.
Money is Decimal throughout; the proxy's cost (a float per request) is summed and rounded
to a billionth of a dollar.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

from sqlite_utils import Database

from llm_monitor.billing import ledger
from llm_monitor.errors import Invalid

PRICE_TOLERANCE = Decimal("0.01")  # a cost more than 1% off the bill, tokens agreeing
NANO = Decimal("1e-9")
NO_KEY = "(no key)"  # provider usage without a key: Anthropic's Workbench
UNKNOWN_KEY = "(unknown key)"  # proxied requests recorded without a key hint
TOKEN_KINDS = ("input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens")


def is_export(source: str) -> bool:
    return "csv" in source or "export" in source


@dataclass
class Side:
    """What one side saw in one group."""

    requests: int = 0
    tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOKEN_KINDS, 0))
    has_tokens: bool = False
    cost: Decimal = Decimal(0)
    has_cost: bool = False
    unpriced: int = 0
    provisional: bool = False

    def add_tokens(self, row: dict[str, Any]) -> None:
        for kind in TOKEN_KINDS:
            if row.get(kind) is not None:
                self.tokens[kind] += row[kind]
                self.has_tokens = True

    def absorb(self, other: Side) -> None:
        self.requests += other.requests
        for kind in TOKEN_KINDS:
            self.tokens[kind] += other.tokens[kind]
        self.has_tokens |= other.has_tokens
        self.cost += other.cost
        self.has_cost |= other.has_cost
        self.unpriced += other.unpriced
        self.provisional |= other.provisional

    @property
    def active(self) -> bool:
        return self.requests > 0 or (self.has_cost and self.cost != 0) or any(self.tokens.values())


@dataclass
class ReconRow:
    day: str
    provider: str
    model: str | None
    level: str  # day, model or key
    key: str | None
    key_name: str | None
    org_id: int | None
    proxy_requests: int
    provider_requests: int | None
    proxy_input_tokens: int | None
    provider_input_tokens: int | None
    proxy_output_tokens: int | None
    provider_output_tokens: int | None
    proxy_cost_usd: Decimal | None
    provider_cost_usd: Decimal | None
    difference_usd: Decimal | None
    capture_pct: Decimal | None
    provisional: bool
    flags: list[str]

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("proxy_cost_usd", "provider_cost_usd", "difference_usd", "capture_pct"):
            data[name] = None if data[name] is None else str(data[name])
        return data


@dataclass(frozen=True)
class KeyRef:
    """A key as reconciliation groups it: a provider key id, or what the proxy knew."""

    ident: str
    label: str
    name: str | None = None


class Keys:
    """Provider key ids with their hints and names; proxy hints matched to them."""

    def __init__(self, db: Database) -> None:
        self.known: dict[tuple[str, str], tuple[str | None, str | None]] = {}
        for row in db.query("select provider, key_id, name, hint from billing_keys"):
            self.known[(row["provider"], row["key_id"])] = (row["hint"], row["name"])
        self._matches: dict[tuple[str, str], KeyRef] = {}

    def provider_key(self, provider: str, row: dict[str, Any]) -> KeyRef:
        key_id, name, hint = row["api_key_id"], row["api_key_name"], row["key_hint"]
        if key_id is None and name is None:
            return KeyRef(NO_KEY, NO_KEY)
        if key_id is not None:
            known_hint, known_name = self.known.get((provider, key_id), (None, None))
            hint, name = hint or known_hint, name or known_name
            self.known.setdefault((provider, key_id), (hint, name))
            return KeyRef(key_id, hint or name or key_id, name)
        return KeyRef(f"name:{name}", name, name)

    def proxy_key(self, provider: str, hint: str | None) -> KeyRef:
        if hint is None:
            return KeyRef(UNKNOWN_KEY, UNKNOWN_KEY)
        found = self._matches.get((provider, hint))
        if found is None:
            candidates = [
                (key_id, known)
                for (p, key_id), known in self.known.items()
                if p == provider and ledger.hints_match(hint, known[0])
            ]
            if len(candidates) == 1:
                key_id, (provider_hint, name) = candidates[0]
                found = KeyRef(key_id, provider_hint or hint, name)
            else:  # unknown to the provider's list, or ambiguous: never guess
                found = KeyRef(f"hint:{hint}", hint)
            self._matches[(provider, hint)] = found
        return found


ALL_KEYS = KeyRef("*", "*")


def _links(db: Database) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int]]:
    by_key, by_project = {}, {}
    for row in db.query("select * from billing_links"):
        if row["api_key_id"]:
            by_key[(row["provider"], row["api_key_id"])] = row["org_id"]
        else:
            by_project[(row["provider"], row["project_id"])] = row["org_id"]
    return by_key, by_project


def _chosen(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per provider and day, the API's rows where there are any, else the exports'."""
    from_api = {(r["provider"], r["day"]) for r in rows if not is_export(r["source"])}
    return [
        r for r in rows if not is_export(r["source"]) or (r["provider"], r["day"]) not in from_api
    ]


def _covered(db: Database, start: str, stop: str) -> set[tuple[str, str]]:
    """(provider, day) pairs some import covered: rows, or an import's finished days."""
    covered = set()
    for table in ("provider_usage", "provider_costs"):
        covered |= {
            (r["provider"], r["day"])
            for r in db.query(
                f"select distinct provider, day from {table} where day >= ? and day <= ?",
                [start, stop],
            )
        }
    for row in db.query("select feed, since, done_through from billing_cursors"):
        if row["done_through"] is None:
            continue
        provider = row["feed"].split(":")[0]
        day = max(dt.date.fromisoformat(row["since"]), dt.date.fromisoformat(start))
        last = min(dt.date.fromisoformat(row["done_through"]), dt.date.fromisoformat(stop))
        while day <= last:
            covered.add((provider, day.isoformat()))
            day += dt.timedelta(days=1)
    return covered


def _nano(value: float | None) -> Decimal:
    return Decimal(repr(value)).quantize(NANO) if value is not None else Decimal(0)


def reconcile(
    db: Database, start: dt.date, end: dt.date, org_id: int | None = None
) -> list[ReconRow]:
    """Rows for the days from `start` to `end` (both included), for one organisation or
    (None) for everything, unmapped spend included."""
    if end < start:
        raise Invalid(f"--from {start} is after --to {end}")
    first, last = start.isoformat(), end.isoformat()
    covered = _covered(db, first, last)
    key_links, project_links = _links(db)
    keys = Keys(db)

    def org_of(provider: str, row: dict[str, Any]) -> int | None:
        if row["api_key_id"] and (provider, row["api_key_id"]) in key_links:
            return key_links[(provider, row["api_key_id"])]
        return project_links.get((provider, row["project_id"]))

    Group = tuple[str, str, str, KeyRef]  # day, provider, model ('' for none), key
    provider_side: dict[Group, Side] = defaultdict(Side)
    unkeyed_cost: dict[tuple[str, str, str], Side] = defaultdict(Side)  # costs without a key
    keyed_usage: set[tuple[str, str]] = set()  # (day, provider) whose usage names keys
    keyed_costs: set[tuple[str, str, str]] = set()  # (day, provider, model) costs by key
    key_org: dict[tuple[str, KeyRef], int | None] = {}

    def rows_of(table: str) -> list[dict[str, Any]]:
        rows = list(db.query(f"select * from {table} where day >= ? and day <= ?", [first, last]))
        rows = _chosen(rows)
        if org_id is not None:
            rows = [r for r in rows if org_of(r["provider"], r) == org_id]
        return rows

    for row in rows_of("provider_usage"):
        provider, model = row["provider"], row["model"] or ""
        key = keys.provider_key(provider, row)
        key_org[(provider, key)] = org_of(provider, row)
        if row["api_key_id"] or row["api_key_name"]:
            keyed_usage.add((row["day"], provider))
        side = provider_side[(row["day"], provider, model, key)]
        side.requests += row["requests"] or 0
        side.add_tokens(row)
        side.provisional |= bool(row["provisional"])
    for row in rows_of("provider_costs"):
        provider, model = row["provider"], row["model"] or ""
        amount = Decimal(row["amount_usd"])
        if row["api_key_id"] or row["api_key_name"]:
            key = keys.provider_key(provider, row)
            key_org.setdefault((provider, key), org_of(provider, row))
            side = provider_side[(row["day"], provider, model, key)]
            keyed_costs.add((row["day"], provider, model))
        else:
            side = unkeyed_cost[(row["day"], provider, model)]
        side.cost += amount
        side.has_cost = True
        side.provisional |= bool(row["provisional"])

    proxy_side: dict[Group, Side] = defaultdict(Side)
    proxy_sql = """
        select substr(ts, 1, 10) as day, provider, coalesce(response_model, model) as model,
          key_hint, count(*) as requests, sum(input_tokens) as input_tokens,
          sum(cached_input_tokens) as cached_input_tokens,
          sum(cache_write_tokens) as cache_write_tokens, sum(output_tokens) as output_tokens,
          sum(cost_usd) as cost_usd, count(case when priced = 0 then 1 end) as unpriced
        from usage
        where ts >= ? and ts < ? and billable = 1
          and (input_tokens is not null or output_tokens is not null)
          and (? is null or org_id = ?)
        group by 1, 2, 3, 4
    """
    stop = (end + dt.timedelta(days=1)).isoformat()
    for row in db.query(proxy_sql, [first, stop, org_id, org_id]):
        if (row["provider"], row["day"]) not in covered:
            continue  # no provider figures for that day: nothing to compare with
        model = ledger.canonical_model(row["provider"], row["model"]) or ""
        key = keys.proxy_key(row["provider"], row["key_hint"])
        side = proxy_side[(row["day"], row["provider"], model, key)]
        side.requests += row["requests"]
        side.add_tokens(row)
        side.cost += _nano(row["cost_usd"])
        side.has_cost = True
        side.unpriced += row["unpriced"]

    return _rows(provider_side, unkeyed_cost, proxy_side, keyed_usage, keyed_costs, key_org, org_id)


def _rows(
    provider_side: dict[Any, Side],
    unkeyed_cost: dict[tuple[str, str, str], Side],
    proxy_side: dict[Any, Side],
    keyed_usage: set[tuple[str, str]],
    keyed_costs: set[tuple[str, str, str]],
    key_org: dict[tuple[str, KeyRef], int | None],
    org_id: int | None,
) -> list[ReconRow]:
    models: dict[tuple[str, str, str], dict[KeyRef, tuple[Side, Side]]] = defaultdict(dict)
    for group in set(provider_side) | set(proxy_side):
        day, provider, model, key = group
        if (day, provider) not in keyed_usage and (day, provider, model) not in keyed_costs:
            key = ALL_KEYS  # the provider's figures name no keys: compare the totals only
        p, x = models[(day, provider, model)].get(key, (Side(), Side()))
        p.absorb(provider_side.get(group, Side()))
        x.absorb(proxy_side.get(group, Side()))
        models[(day, provider, model)][key] = (p, x)
    for group in unkeyed_cost:
        models.setdefault(group, {})

    out: list[ReconRow] = []
    days: dict[tuple[str, str], tuple[Side, Side, list[str]]] = {}
    for (day, provider, model), by_key in sorted(models.items()):
        theirs, ours, matched = Side(), Side(), Side()
        bypass: list[KeyRef] = []
        bypass_cost = Decimal(0)
        key_rows = []
        # Proxied requests without a key hint (hints off) could be any key's: no key is
        # then said to have bypassed the proxy.
        hintless = any(k.ident == UNKNOWN_KEY and x.requests for k, (_, x) in by_key.items())
        for key, (p, x) in sorted(by_key.items(), key=lambda kv: kv[0].label):
            theirs.absorb(p)
            ours.absorb(x)
            if (
                p.active
                and x.requests == 0
                and not hintless
                and key.ident not in (ALL_KEYS.ident, UNKNOWN_KEY)
            ):
                bypass.append(key)
                bypass_cost += p.cost
            else:
                matched.absorb(p)
            if key != ALL_KEYS:
                key_rows.append(
                    _key_row(day, provider, model, key, p, x, key_org, org_id, hintless)
                )
        extra = unkeyed_cost.get((day, provider, model))
        if extra is not None:
            theirs.absorb(extra)
            matched.absorb(extra)
        flags = _model_flags(model, theirs, ours, matched, bypass, bypass_cost, extra is not None)
        out.append(
            _row(day, provider, model or None, "model", None, None, org_id, theirs, ours, flags)
        )
        out.extend(key_rows)
        total = days.setdefault((day, provider), (Side(), Side(), []))
        total[0].absorb(theirs)
        total[1].absorb(ours)
        total[2].extend(f for f in flags if f.startswith("bypass"))
    for (day, provider), (theirs, ours, bypass_flags) in days.items():
        flags = [*bypass_flags[:1]] if bypass_flags else []
        if theirs.provisional:
            flags.append("provisional")
        out.append(_row(day, provider, None, "day", None, None, org_id, theirs, ours, flags))
    # A provider's day first, then each model followed by its keys.
    out.sort(
        key=lambda r: (
            r.day,
            r.provider,
            r.level != "day",
            r.model or "",
            r.level == "key",
            r.key or "",
        )
    )
    return out


def _model_flags(
    model: str,
    theirs: Side,
    ours: Side,
    matched: Side,
    bypass: list[KeyRef],
    bypass_cost: Decimal,
    unkeyed_costs: bool,
) -> list[str]:
    flags = []
    name = model or "(not a model)"
    if bypass:
        labels = ", ".join(k.label for k in bypass)
        flags.append(f"bypass: provider spend on keys the proxy never saw ({labels})")
    elif theirs.active and ours.requests == 0:
        flags.append("bypass: provider spend the proxy never saw")
    if ours.requests and not theirs.active:
        flags.append(f"missing: {name} is not in the provider's figures")
    tokens_agree = None
    if ours.requests and matched.has_tokens:
        diffs = [
            f"{kind.removesuffix('_tokens')} {ours.tokens[kind]} vs {matched.tokens[kind]}"
            for kind in ("input_tokens", "output_tokens")
            if ours.tokens[kind] != matched.tokens[kind]
        ]
        tokens_agree = not diffs
        if diffs:
            flags.append(f"tokens: {name} differs ({'; '.join(diffs)})")
    if ours.unpriced:
        flags.append(f"unpriced: {ours.unpriced} proxied requests of {name} have no price")
    # Money of keys the proxy never saw can be set apart only where costs name keys.
    comparable = matched.has_cost and not (bypass and unkeyed_costs)
    if tokens_agree and comparable and not ours.unpriced and matched.cost:
        off = (ours.cost - matched.cost) / matched.cost
        if abs(off) > PRICE_TOLERANCE:
            flags.append(
                f"price: {name} costs {abs(off) * 100:.1f}% "
                f"{'more' if off > 0 else 'less'} through the proxy than on the bill"
            )
    if theirs.provisional:
        flags.append("provisional")
    return flags


def _key_row(
    day: str,
    provider: str,
    model: str,
    key: KeyRef,
    theirs: Side,
    ours: Side,
    key_org: dict[tuple[str, KeyRef], int | None],
    org_id: int | None,
    hintless: bool,
) -> ReconRow:
    flags = []
    if theirs.active and ours.requests == 0 and not hintless and key.ident != UNKNOWN_KEY:
        flags.append(f"bypass: key {key.label} has provider spend the proxy never saw")
    elif ours.requests and not theirs.active:
        if key.ident == UNKNOWN_KEY:
            flags.append("keys: proxied requests without a key hint (monitor_key_hints off?)")
        else:
            flags.append(f"missing: key {key.label} is not in the provider's figures")
    elif ours.requests and theirs.has_tokens:
        for kind in ("input_tokens", "output_tokens"):
            if ours.tokens[kind] != theirs.tokens[kind]:
                flags.append(
                    f"tokens: {kind.removesuffix('_tokens')} {ours.tokens[kind]} "
                    f"vs {theirs.tokens[kind]}"
                )
    if theirs.provisional:
        flags.append("provisional")
    owner = org_id if org_id is not None else key_org.get((provider, key))
    return _row(
        day, provider, model or None, "key", key.label, key.name, owner, theirs, ours, flags
    )


def _row(
    day: str,
    provider: str,
    model: str | None,
    level: str,
    key: str | None,
    key_name: str | None,
    org_id: int | None,
    theirs: Side,
    ours: Side,
    flags: list[str],
) -> ReconRow:
    their_cost = theirs.cost if theirs.has_cost else None
    # The proxy's side is known, and zero, where it saw no request at all.
    seen = ours.has_cost or ours.requests == 0
    our_cost = ours.cost if seen and not ours.unpriced else None
    our_tokens = ours.has_tokens or ours.requests == 0
    difference = our_cost - their_cost if None not in (our_cost, their_cost) else None
    capture = None
    if our_cost is not None and their_cost:
        capture = (our_cost / their_cost * 100).quantize(Decimal("0.1"))
    return ReconRow(
        day=day,
        provider=provider,
        model=model,
        level=level,
        key=key,
        key_name=key_name,
        org_id=org_id,
        proxy_requests=ours.requests,
        provider_requests=theirs.requests or None,
        proxy_input_tokens=ours.tokens["input_tokens"] if our_tokens else None,
        provider_input_tokens=theirs.tokens["input_tokens"] if theirs.has_tokens else None,
        proxy_output_tokens=ours.tokens["output_tokens"] if our_tokens else None,
        provider_output_tokens=theirs.tokens["output_tokens"] if theirs.has_tokens else None,
        proxy_cost_usd=_plain(our_cost),
        provider_cost_usd=_plain(their_cost),
        difference_usd=_plain(difference),
        capture_pct=capture,
        provisional=theirs.provisional,
        flags=flags,
    )


def _plain(value: Decimal | None) -> Decimal | None:
    """Without trailing zeros, never in exponent notation (0E-9 -> 0)."""
    if value is None:
        return None
    value = value.normalize()
    return value.quantize(Decimal(1)) if value == value.to_integral() else value


def store(
    db: Database, start: dt.date, end: dt.date, scope_org_id: int | None, rows: Iterable[ReconRow]
) -> None:
    """Keep the rows for the dashboard: they replace the scope's rows of those days."""
    now = ledger.now_timestamp()
    records = []
    for row in rows:
        record = row.as_dict()
        record["flags"] = "; ".join(row.flags) or None
        record["provisional"] = int(row.provisional)
        records.append({**record, "scope_org_id": scope_org_id, "computed_at": now})
    with db.atomic():
        db.execute(
            "delete from billing_reconciliation where scope_org_id is ? and day >= ? and day <= ?",
            [scope_org_id, start.isoformat(), end.isoformat()],
        )
        if records:
            db["billing_reconciliation"].insert_all(records)


def refresh(db: Database, start: dt.date, end: dt.date) -> int:
    """Recompute and keep the rows of every scope: all organisations (the instance
    admin's), and each organisation with links or proxied requests in the range."""
    rows = reconcile(db, start, end)
    store(db, start, end, None, rows)
    count = len(rows)
    orgs = {r["org_id"] for r in db.query("select distinct org_id from billing_links")}
    orgs |= {
        r["org_id"]
        for r in db.query(
            "select distinct org_id from usage_daily where day >= ? and day <= ?",
            [start.isoformat(), end.isoformat()],
        )
        if r["org_id"]
    }
    for org in sorted(orgs):
        org_rows = reconcile(db, start, end, org)
        store(db, start, end, org, org_rows)
        count += len(org_rows)
    return count
