"""The daily collections match: orders against the money that paid them and the evidence that
they were delivered. Pure functions, no I/O: the rules come in as a mapping (read from
``config/reconcile.yaml`` by the flow), the records as canonical objects.

What the rules say (see the YAML for the operator's view):

- a payment trace names its order through the first reference rule that finds one
  (provider reference, merchant reference, end-to-end id, customer reference, a word of the
  remittance text), and only when it was booked inside the order's date window (days before,
  the method's settlement lag after);
- an order's received money is the sum of its payment traces (1:1 or 1:N), each converted
  to the order's currency at the configured rate when it differs, gross (or net plus its fee),
  plus the operator's amount adjustments; it agrees with the order's total within the
  tolerance (absolute or percent, rounded with a named mode);
- refunds and chargebacks find their order through their own references (the original
  payment's reference, or the merchant reference) and form groups of their own;
- a payout is checked against the traces it paid out (N:1);
- what does not square becomes a discrepancy of a named class.

The same inputs always give the same result: every list is sorted by stable keys and every
id is derived from what it names.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, timedelta, tzinfo
from decimal import Decimal
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

from canonical import (
    Delivery,
    DeliveryStatus,
    Direction,
    Money,
    Order,
    OrderStatus,
    PaymentSource,
    PaymentTrace,
    Payout,
    TraceKind,
)
from canonical.money import RoundingMode, minor_unit
from mappings.payments import supersede_provisional


class RulesError(ValueError):
    """A reconciliation rule file that cannot be used; the message names the setting."""


class DiscrepancyClass(StrEnum):
    UNPAID_ORDER = "unpaid_order"
    PAYMENT_WITHOUT_ORDER = "payment_without_order"
    AMOUNT_MISMATCH = "amount_mismatch"
    DUPLICATE_PAYMENT = "duplicate_payment"
    DELIVERED_NOT_PAID = "delivered_not_paid"
    PAID_NOT_DELIVERED = "paid_not_delivered"
    PAYOUT_MISMATCH = "payout_mismatch"
    """A payout not equal to the transactions it paid out."""


class GroupKind(StrEnum):
    ONE_TO_ONE = "one_to_one"
    ONE_TO_MANY = "one_to_many"
    REFUND = "refund"
    CHARGEBACK = "chargeback"
    PAYOUT = "payout"


class CorrectionKind(StrEnum):
    ADJUST = "adjust"
    """An amount that counts as received (or, negative, as not received) for an order."""
    ACCEPT = "accept"
    """The operator accepts the discrepancies of an order, trace or payout as they are."""
    ASSIGN = "assign"
    """A trace belongs to this order (its references did not say so)."""


SOURCE_METHODS: dict[str, str] = {
    PaymentSource.CARD_ACQUIRER: "card", PaymentSource.STRIPE: "card",
    PaymentSource.PAYPAL: "paypal", PaymentSource.COD: "cod",
    PaymentSource.WALLET: "wallet_balance", PaymentSource.SPLIT: "split",
    PaymentSource.CAMT053: "bank_transfer", PaymentSource.CAMT052: "bank_transfer",
    PaymentSource.CAMT054: "bank_transfer", PaymentSource.MT940: "bank_transfer",
    PaymentSource.MT942: "bank_transfer",
}
TRACE_FIELDS = ("provider_reference", "merchant_reference", "end_to_end_id",
                "customer_reference", "account_servicer_reference", "transaction_id",
                "description")
PAYMENT_KINDS = frozenset({TraceKind.PAYMENT})
REFUND_KINDS = {TraceKind.REFUND: GroupKind.REFUND, TraceKind.REFUND_REVERSAL: GroupKind.REFUND,
                TraceKind.CHARGEBACK: GroupKind.CHARGEBACK,
                TraceKind.CHARGEBACK_REVERSAL: GroupKind.CHARGEBACK}
LINKED_PAYOUT_SOURCES = frozenset({PaymentSource.CARD_ACQUIRER, PaymentSource.STRIPE,
                                   PaymentSource.WALLET})
_WORD = re.compile(r"[A-Za-z0-9_-]+")


# rules --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReferenceRule:
    trace: str
    order: str
    contains: bool = False

    @property
    def name(self) -> str:
        return f"{self.trace}->{self.order}"


@dataclass(frozen=True)
class MethodRule:
    lag_days: int
    basis: str = "gross"


@dataclass(frozen=True)
class Rules:
    references: tuple[ReferenceRule, ...]
    tolerance_absolute: Decimal = Decimal(0)
    tolerance_percent: Decimal = Decimal(0)
    rounding: RoundingMode = RoundingMode.HALF_EVEN
    days_before: int = 0
    default_lag_days: int = 3
    methods: Mapping[str, MethodRule] = field(default_factory=dict)
    one_to_many: bool = True
    payouts: bool = True
    require_delivery: bool = True
    fx_rounding: RoundingMode = RoundingMode.HALF_EVEN
    fx_tolerance_percent: Decimal = Decimal(0)
    rates: Mapping[tuple[str, str], Decimal] = field(default_factory=dict)
    close_threshold: Decimal = Decimal(0)
    digest: str = ""

    def method(self, name: str | None) -> MethodRule:
        return self.methods.get(name or "", MethodRule(self.default_lag_days))

    def max_lag(self) -> int:
        return max([self.default_lag_days, *(m.lag_days for m in self.methods.values())])

    def rate(self, source: str, target: str) -> Decimal | None:
        if source == target:
            return Decimal(1)
        if (source, target) in self.rates:
            return self.rates[(source, target)]
        inverse = self.rates.get((target, source))
        return None if inverse is None else Decimal(1) / inverse


def _decimal(value: Any, name: str) -> Decimal:
    if isinstance(value, float | bool):
        raise RulesError(f"{name}: write amounts as quoted decimal strings, not {value!r}")
    try:
        result = Decimal(str(value))
    except ArithmeticError:
        raise RulesError(f"{name}: {value!r} is not a decimal number") from None
    if not result.is_finite() or result < 0:
        raise RulesError(f"{name}: {value!r} must be a finite number >= 0")
    return result


def _int(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise RulesError(f"{name}: {value!r} must be a whole number of days >= 0")
    return value


def _rounding(value: Any, name: str) -> RoundingMode:
    try:
        return RoundingMode(str(value))
    except ValueError:
        raise RulesError(f"{name}: {value!r} is not a rounding mode "
                         f"({', '.join(m.value for m in RoundingMode)})") from None


def rules_from_mapping(data: Mapping[str, Any], *, digest: str = "") -> Rules:
    """Rules from the parsed YAML; every bad setting is named."""
    if not isinstance(data, Mapping):
        raise RulesError("the rule file must be a mapping")
    if data.get("version") != 1:
        raise RulesError(f"version: {data.get('version')!r}; this vouchflow reads version 1")
    refs = []
    for i, raw in enumerate(data.get("references") or []):
        if not isinstance(raw, Mapping) or raw.get("trace") not in TRACE_FIELDS \
                or raw.get("order") not in {"provider_reference", "order_id"}:
            raise RulesError(f"references[{i}]: needs trace (one of {', '.join(TRACE_FIELDS)})"
                             " and order (provider_reference or order_id)")
        refs.append(ReferenceRule(raw["trace"], raw["order"], bool(raw.get("contains", False))))
    if not refs:
        raise RulesError("references: at least one rule is needed")
    amount = data.get("amount") or {}
    dates = data.get("dates") or {}
    methods = {}
    for name, raw in (data.get("methods") or {}).items():
        basis = (raw or {}).get("basis", "gross")
        if basis not in {"gross", "net"}:
            raise RulesError(f"methods.{name}.basis: {basis!r} is not gross or net")
        methods[str(name)] = MethodRule(_int((raw or {}).get("lag_days", 0),
                                             f"methods.{name}.lag_days"), basis)
    currency = data.get("currency") or {}
    rates = {}
    for pair, value in (currency.get("rates") or {}).items():
        parts = str(pair).split("/")
        if len(parts) != 2 or not all(re.fullmatch(r"[A-Z]{3}", p) for p in parts):
            raise RulesError(f"currency.rates: {pair!r} is not FROM/TO (e.g. USD/SGD)")
        rate = _decimal(value, f"currency.rates.{pair}")
        if rate == 0:
            raise RulesError(f"currency.rates.{pair}: a rate cannot be 0")
        rates[(parts[0], parts[1])] = rate
    return Rules(
        references=tuple(refs),
        tolerance_absolute=_decimal(amount.get("tolerance_absolute", "0"),
                                    "amount.tolerance_absolute"),
        tolerance_percent=_decimal(amount.get("tolerance_percent", "0"),
                                   "amount.tolerance_percent"),
        rounding=_rounding(amount.get("rounding", "half_even"), "amount.rounding"),
        days_before=_int(dates.get("days_before", 0), "dates.days_before"),
        default_lag_days=_int(dates.get("default_lag_days", 3), "dates.default_lag_days"),
        methods=methods,
        one_to_many=bool(data.get("one_to_many", True)),
        payouts=bool(data.get("payouts", True)),
        require_delivery=bool(data.get("require_delivery", True)),
        fx_rounding=_rounding(currency.get("rounding", "half_even"), "currency.rounding"),
        fx_tolerance_percent=_decimal(currency.get("tolerance_percent", "0"),
                                      "currency.tolerance_percent"),
        rates=rates,
        close_threshold=_decimal((data.get("close") or {}).get("threshold", "0"),
                                 "close.threshold"),
        digest=digest,
    )


# inputs -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Correction:
    """An operator's adjustment: never an edit of source data, an input to the next match."""

    kind: CorrectionKind
    target: str
    """``order:{site}:{order_id}``, ``trace:{trace_id}`` or ``payout:{payout_id}``."""
    amount: Money | None = None
    assign_to: str | None = None
    """For ``assign``: the ``order:{site}:{order_id}`` the trace belongs to."""
    correction_id: int = 0


ORDER_EXPORT_COLUMNS = ("site", "order_id", "status", "created_at", "currency", "total",
                        "method", "provider_reference")
"""The sites' confirmed-orders export as CSV: one row an order, its total and how it was paid
(the flat form a large day comes in; the canonical JSON lines carry the lines too)."""
DELIVERY_EXPORT_COLUMNS = ("site", "order_id", "status", "quantity")
"""Delivery evidence as CSV: one row an order."""
DELIVERY_EXPORT_OPTIONAL = ("kind", "delivered_at")
"""Columns a delivery export may add."""


def order_from_export(row: Mapping[str, str | None]) -> Order:
    """One row of the orders export as a canonical order: its total as one line, and its
    payment when it names a method. Raises pydantic's ValidationError naming the field."""
    def cell(name: str) -> str | None:
        value = row.get(name)
        return value.strip() or None if isinstance(value, str) else value

    currency, total = cell("currency"), cell("total")
    money = {"amount": total, "currency": currency}
    method, reference = cell("method"), cell("provider_reference")
    payment = None
    if method is not None or reference is not None:
        payment = {"method": method, "provider": method or "unknown",
                   "provider_reference": reference, "amount": money}
    return Order.model_validate({
        "site": cell("site"), "order_id": cell("order_id"), "status": cell("status"),
        "created_at": cell("created_at"), "updated_at": cell("created_at"),
        "currency": currency, "payment": payment,
        "lines": [{"line_id": "1", "sku": "ORDER-TOTAL", "quantity": 1,
                   "unit_price": money}]})


def delivery_from_export(row: Mapping[str, str | None], *, day: date, source: str
                         ) -> Delivery:
    """One row of the delivery export as canonical delivery evidence (delivered at the
    start of ``day`` in UTC when the row does not say when)."""
    def cell(name: str) -> str | None:
        value = row.get(name)
        return value.strip() or None if isinstance(value, str) else value

    site, order_id = cell("site"), cell("order_id")
    return Delivery.model_validate({
        "delivery_id": f"{site}-{order_id}", "site": site, "order_id": order_id,
        "kind": cell("kind") or "codes", "status": cell("status"),
        "quantity": cell("quantity"), "source": source,
        "delivered_at": cell("delivered_at") or f"{day.isoformat()}T00:00:00+00:00"})


def order_target(site: str, order_id: str) -> str:
    return f"order:{site}:{order_id}"


@dataclass(frozen=True)
class DayInput:
    day: date
    orders: Sequence[Order]
    """The day's orders and those of the days before within the longest settlement lag (so a
    late payment of yesterday's order is not taken for a payment without order)."""
    traces: Sequence[PaymentTrace]
    deliveries: Sequence[Delivery] = ()
    payouts: Sequence[Payout] = ()
    corrections: Sequence[Correction] = ()
    site_zones: Mapping[str, str] = field(default_factory=dict)
    """Site -> time zone: an order's business day is its creation date on the site's clock."""


# outputs ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MatchGroup:
    group_id: str
    kind: GroupKind
    site: str | None
    method: str | None
    order_id: str | None
    trace_ids: tuple[str, ...]
    expected: Money | None
    received: Money | None
    fee: Money | None
    rule: str
    payout_id: str | None = None


@dataclass(frozen=True)
class Discrepancy:
    key: str
    """Stable: the class and the entity (so a re-run finds the same discrepancy)."""
    cls: DiscrepancyClass
    site: str | None
    method: str | None
    order_id: str | None
    trace_ids: tuple[str, ...]
    expected: Money | None
    actual: Money | None
    difference: Money | None
    detail: str
    payout_id: str | None = None
    status: str = "open"
    """``open``, or ``accepted`` by an operator's correction."""


@dataclass(frozen=True)
class OrderOutcome:
    """What one order of the day came to: the remittance batch lines are made of these."""

    site: str
    order_id: str
    method: str
    currency: str
    expected: Decimal
    received: Decimal
    fee: Decimal
    refunded: Decimal
    reference: str | None
    matched: bool


@dataclass(frozen=True)
class DayResult:
    day: date
    groups: tuple[MatchGroup, ...]
    discrepancies: tuple[Discrepancy, ...]
    outcomes: tuple[OrderOutcome, ...]
    superseded: int
    rules_digest: str

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {f"group:{k.value}": 0 for k in GroupKind}
        out.update({f"discrepancy:{c.value}": 0 for c in DiscrepancyClass})
        for g in self.groups:
            out[f"group:{g.kind.value}"] += 1
        for d in self.discrepancies:
            out[f"discrepancy:{d.cls.value}"] += 1
        return out

    def by_class(self) -> dict[DiscrepancyClass, list[Discrepancy]]:
        out: dict[DiscrepancyClass, list[Discrepancy]] = {c: [] for c in DiscrepancyClass}
        for d in self.discrepancies:
            out[d.cls].append(d)
        return out

    def totals(self) -> Totals:
        """Per (method, site, currency): orders, expected, received, fees, matched orders."""
        sums: dict[tuple[str, str, str], list[Any]] = defaultdict(
            lambda: [0, Decimal(0), Decimal(0), Decimal(0), 0])
        for o in self.outcomes:
            row = sums[(o.method, o.site, o.currency)]
            row[0] += 1
            row[1] += o.expected
            row[2] += o.received
            row[3] += o.fee
            row[4] += 1 if o.matched else 0
        return {k: (v[0], v[1], v[2], v[3], v[4]) for k, v in sums.items()}


Totals = dict[tuple[str, str, str], tuple[int, Decimal, Decimal, Decimal, int]]
"""Per (method, site, currency): orders, expected, received, fees, matched orders."""


# the engine ---------------------------------------------------------------------------------
def _key(*parts: object) -> str:
    text = "\x1f".join(str(p) for p in parts)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def order_day(order: Order, zones: Mapping[str, str]) -> date:
    zone: tzinfo = ZoneInfo(zones[order.site]) if order.site in zones else ZoneInfo("UTC")
    return order.created_at.astimezone(zone).date()


def _quantum(currency: str) -> Decimal:
    return Decimal(1).scaleb(-minor_unit(currency))


@dataclass
class _Order:
    order: Order
    day: date
    method: str
    total: Decimal
    payments: list[tuple[PaymentTrace, Decimal, Decimal, str]] = field(default_factory=list)
    """(trace, amount in the order's currency, fee in it, rule)."""
    refunds: list[tuple[PaymentTrace, Decimal, str]] = field(default_factory=list)
    adjustments: Decimal = Decimal(0)

    @property
    def key(self) -> str:
        return order_target(self.order.site, self.order.order_id)


class _Engine:
    def __init__(self, rules: Rules, data: DayInput) -> None:
        self.rules = rules
        self.data = data
        self.orders: dict[str, _Order] = {}
        self.by_order_id: dict[str, list[_Order]] = defaultdict(list)
        self.by_provider_ref: dict[str, list[_Order]] = defaultdict(list)
        self.order_of_trace: dict[str, _Order] = {}
        for order in sorted(data.orders, key=lambda o: (o.site, o.order_id)):
            method = order.payment.method.value if order.payment else "unknown"
            entry = _Order(order, order_day(order, data.site_zones), method,
                           order.total().amount)
            self.orders[entry.key] = entry
            self.by_order_id[order.order_id].append(entry)
            if order.payment is not None:
                self.by_provider_ref[order.payment.provider_reference].append(entry)

    # money ----------------------------------------------------------------------------------
    def convert(self, amount: Decimal, source: str, target: str) -> Decimal | None:
        rate = self.rules.rate(source, target)
        if rate is None:
            return None
        if source == target:
            return amount
        return (amount * rate).quantize(_quantum(target), rounding=self.rules.fx_rounding
                                        .decimal_mode)

    def tolerance(self, expected: Decimal, currency: str, converted: bool) -> Decimal:
        percent = self.rules.tolerance_percent + (self.rules.fx_tolerance_percent
                                                  if converted else Decimal(0))
        by_percent = abs(expected) * percent / Decimal(100)
        tol = max(self.rules.tolerance_absolute, by_percent)
        return tol.quantize(_quantum(currency), rounding=self.rules.rounding.decimal_mode)

    # finding orders -------------------------------------------------------------------------
    def _candidates(self, trace: PaymentTrace) -> Iterable[tuple[str, list[_Order]]]:
        refs = trace.references
        for rule in self.rules.references:
            value = trace.description if rule.trace == "description" else \
                getattr(refs, rule.trace, None)
            if not value:
                continue
            index = self.by_provider_ref if rule.order == "provider_reference" \
                else self.by_order_id
            if rule.contains:
                for word in _WORD.findall(value):
                    if word in index:
                        yield rule.name, index[word]
            elif value in index:
                yield rule.name, index[value]

    def in_window(self, entry: _Order, trace: PaymentTrace) -> bool:
        booked = trace.booking_date
        lag = self.rules.method(entry.method).lag_days
        return entry.day - timedelta(days=self.rules.days_before) <= booked \
            <= entry.day + timedelta(days=lag)

    def find_order(self, trace: PaymentTrace, assigned: Mapping[str, str]
                   ) -> tuple[_Order, str] | None:
        target = assigned.get(trace.trace_id)
        if target is not None and target in self.orders:
            return self.orders[target], "assigned"
        for rule, entries in self._candidates(trace):
            fitting = [e for e in entries if self.in_window(e, trace)]
            if not fitting:
                continue
            same = [e for e in fitting if e.order.currency == trace.amount.currency]
            return (same or fitting)[0], rule
        return None

    def amount_of(self, entry: _Order, trace: PaymentTrace) -> tuple[Decimal, Decimal] | None:
        """(amount, fee) in the order's currency; None when no rate converts it."""
        currency = entry.order.currency
        amount = self.convert(trace.amount.amount, trace.amount.currency, currency)
        if amount is None:
            return None
        fee = Decimal(0)
        if trace.fee is not None:
            fee = self.convert(trace.fee.amount, trace.fee.currency, currency) or Decimal(0)
        if self.rules.method(entry.method).basis == "net":
            amount += fee
        return amount, fee

    # the run --------------------------------------------------------------------------------
    def run(self) -> DayResult:
        data, rules = self.data, self.rules
        dedup = supersede_provisional(sorted(data.traces, key=lambda t: t.trace_id))
        traces = dedup.traces
        assigned = {c.target.removeprefix("trace:"): c.assign_to or "" for c in
                    data.corrections if c.kind is CorrectionKind.ASSIGN}
        accepted = {c.target for c in data.corrections if c.kind is CorrectionKind.ACCEPT}
        for c in data.corrections:
            if c.kind is CorrectionKind.ADJUST and c.target in self.orders and c.amount:
                entry = self.orders[c.target]
                converted = self.convert(c.amount.amount, c.amount.currency,
                                         entry.order.currency)
                entry.adjustments += converted or Decimal(0)
        groups: list[MatchGroup] = []
        found: list[Discrepancy] = []
        orphans: list[PaymentTrace] = []
        unconverted: list[tuple[_Order, PaymentTrace]] = []
        payment_by_provider_ref: dict[str, _Order] = {}

        for trace in traces:
            if trace.kind in PAYMENT_KINDS and trace.direction is Direction.CREDIT:
                hit = self.find_order(trace, assigned)
                if hit is None:
                    orphans.append(trace)
                    continue
                entry, rule = hit
                money = self.amount_of(entry, trace)
                if money is None:
                    unconverted.append((entry, trace))
                    continue
                entry.payments.append((trace, money[0], money[1], rule))
                self.order_of_trace[trace.trace_id] = entry
                if trace.references.provider_reference:
                    payment_by_provider_ref[trace.references.provider_reference] = entry
        for trace in traces:
            group_kind = REFUND_KINDS.get(trace.kind)
            if group_kind is None:
                continue
            entry = None
            rule = "original_reference"
            original = trace.references.original_reference
            if original and original in payment_by_provider_ref:
                entry = payment_by_provider_ref[original]
            elif original and original in self.by_provider_ref:
                entry = self.by_provider_ref[original][0]
            else:
                hit = self.find_order(trace, assigned)
                if hit is not None:
                    entry, rule = hit
            if entry is None:
                orphans.append(trace)
                continue
            amount = self.convert(trace.amount.amount, trace.amount.currency,
                                  entry.order.currency) or Decimal(0)
            signed = -amount if trace.direction is Direction.DEBIT else amount
            entry.refunds.append((trace, signed, rule))
            self.order_of_trace[trace.trace_id] = entry
            currency = entry.order.currency
            groups.append(MatchGroup(
                group_id=_key("refund", trace.trace_id), kind=group_kind,
                site=entry.order.site, method=entry.method, order_id=entry.order.order_id,
                trace_ids=(trace.trace_id,), expected=None,
                received=Money(amount=signed, currency=currency), fee=None, rule=rule))

        delivered = {(d.site, d.order_id) for d in data.deliveries
                     if d.status is DeliveryStatus.DELIVERED and d.quantity > 0}
        outcomes: list[OrderOutcome] = []
        for entry in self.orders.values():
            if entry.day != data.day:
                continue
            groups_, found_, outcome = self.classify(entry, (entry.order.site,
                                                             entry.order.order_id) in delivered)
            groups.extend(groups_)
            found.extend(found_)
            outcomes.append(outcome)
        for entry, trace in unconverted:
            if entry.day != data.day:
                continue
            found.append(self.discrepancy(
                DiscrepancyClass.AMOUNT_MISMATCH, entry, (trace.trace_id,), None, None,
                f"no rate converts {trace.amount.currency} to {entry.order.currency}",
                key_extra=trace.trace_id))
        for trace in orphans:
            if trace.booking_date != data.day:
                continue
            money = trace.signed_amount
            found.append(Discrepancy(
                key=_key(DiscrepancyClass.PAYMENT_WITHOUT_ORDER, trace.trace_id),
                cls=DiscrepancyClass.PAYMENT_WITHOUT_ORDER, site=None,
                method=SOURCE_METHODS.get(trace.source), order_id=None,
                trace_ids=(trace.trace_id,), expected=None, actual=money, difference=money,
                detail=f"{trace.kind.value} {trace.amount} from {trace.origin} names no order "
                       f"of the window ({_refs_text(trace)})"))
        if rules.payouts:
            groups_, found_ = self.payouts(traces)
            groups.extend(groups_)
            found.extend(found_)

        final = settle(found, accepted)
        groups.sort(key=lambda g: (g.kind.value, g.site or "", g.order_id or "", g.group_id))
        outcomes.sort(key=lambda o: (o.site, o.order_id))
        return DayResult(day=data.day, groups=tuple(groups), discrepancies=tuple(final),
                         outcomes=tuple(outcomes), superseded=len(dedup.superseded),
                         rules_digest=rules.digest)

    def discrepancy(self, cls: DiscrepancyClass, entry: _Order, trace_ids: tuple[str, ...],
                    expected: Decimal | None, actual: Decimal | None, detail: str,
                    key_extra: str = "") -> Discrepancy:
        currency = entry.order.currency
        diff = None
        if expected is not None and actual is not None:
            diff = Money(amount=actual - expected, currency=currency)
        elif expected is not None:
            diff = Money(amount=-expected, currency=currency)
        return Discrepancy(
            key=_key(cls, entry.key, key_extra), cls=cls, site=entry.order.site,
            method=entry.method, order_id=entry.order.order_id, trace_ids=trace_ids,
            expected=None if expected is None else Money(amount=expected, currency=currency),
            actual=None if actual is None else Money(amount=actual, currency=currency),
            difference=diff, detail=detail)

    def classify(self, entry: _Order, delivered: bool
                 ) -> tuple[list[MatchGroup], list[Discrepancy], OrderOutcome]:
        order, currency = entry.order, entry.order.currency
        expected = Decimal(0) if order.status is OrderStatus.CANCELLED else entry.total
        payments = sorted(entry.payments, key=lambda p: (p[0].booking_date, p[0].trace_id))
        converted = any(p[0].amount.currency != currency for p in payments)
        tol = self.tolerance(expected, currency, converted)
        groups: list[MatchGroup] = []
        found: list[Discrepancy] = []
        counted: list[tuple[PaymentTrace, Decimal, Decimal, str]] = []
        duplicates: list[tuple[PaymentTrace, Decimal, Decimal, str]] = []
        running = entry.adjustments
        for p in payments:
            if abs(running - expected) <= tol and counted and \
                    any(abs(p[1] - c[1]) <= tol for c in counted):
                duplicates.append(p)  # the order is paid; this repeats a payment counted
                continue
            if counted and not self.rules.one_to_many:
                duplicates.append(p)
                continue
            counted.append(p)
            running += p[1]
        received = running
        fee = sum((p[2] for p in counted), Decimal(0))
        refunded = sum((r[1] for r in entry.refunds), Decimal(0))
        ids = tuple(p[0].trace_id for p in counted)
        matched = bool(counted) and abs(received - expected) <= tol
        if counted:
            groups.append(MatchGroup(
                group_id=_key("order", entry.key), kind=GroupKind.ONE_TO_ONE
                if len(counted) == 1 else GroupKind.ONE_TO_MANY, site=order.site,
                method=entry.method, order_id=order.order_id, trace_ids=ids,
                expected=Money(amount=expected, currency=currency),
                received=Money(amount=received, currency=currency),
                fee=Money(amount=fee, currency=currency),
                rule=",".join(sorted({p[3] for p in counted}))))
        if duplicates:
            extra = sum((p[1] for p in duplicates), Decimal(0))
            found.append(self.discrepancy(
                DiscrepancyClass.DUPLICATE_PAYMENT, entry,
                tuple(p[0].trace_id for p in duplicates), Decimal(0), extra,
                f"{len(duplicates)} payment(s) of {extra} {currency} beyond the order's "
                f"{expected} repeat one already counted"))
        paid = bool(counted) or entry.adjustments != 0
        needs_payment = order.status is not OrderStatus.CANCELLED and expected != 0
        if needs_payment and not paid:
            cls = DiscrepancyClass.DELIVERED_NOT_PAID if delivered and \
                self.rules.require_delivery else DiscrepancyClass.UNPAID_ORDER
            found.append(self.discrepancy(
                cls, entry, (), expected, Decimal(0),
                f"{entry.method} order of {expected} {currency}: no payment found"
                + (" although it was delivered" if cls is DiscrepancyClass.DELIVERED_NOT_PAID
                   else "")))
        elif (paid or expected != 0) and abs(received - expected) > tol:
            found.append(self.discrepancy(
                DiscrepancyClass.AMOUNT_MISMATCH, entry, ids, expected, received,
                f"received {received} {currency} for an order of {expected} "
                f"(tolerance {tol})"))
        if paid and not delivered and self.rules.require_delivery and \
                order.status is OrderStatus.CONFIRMED:
            found.append(self.discrepancy(
                DiscrepancyClass.PAID_NOT_DELIVERED, entry, ids, None, received,
                "paid, but no delivery evidence"))
        reference = order.payment.provider_reference if order.payment else None
        outcome = OrderOutcome(
            site=order.site, order_id=order.order_id, method=entry.method, currency=currency,
            expected=expected, received=received, fee=fee, refunded=refunded,
            reference=reference, matched=matched)
        return groups, found, outcome

    def payouts(self, traces: Sequence[PaymentTrace]
                ) -> tuple[list[MatchGroup], list[Discrepancy]]:
        by_payout: dict[tuple[str, str], list[PaymentTrace]] = defaultdict(list)
        by_batch: dict[tuple[str, str], list[PaymentTrace]] = defaultdict(list)
        for trace in traces:
            if trace.kind in {TraceKind.PAYOUT, TraceKind.PAYOUT_REVERSAL}:
                continue
            if trace.references.payout_id:
                by_payout[(trace.account, trace.references.payout_id)].append(trace)
            elif trace.references.batch_id:
                by_batch[(trace.account, trace.references.batch_id)].append(trace)
        groups, found = [], []
        for payout in sorted(self.data.payouts, key=lambda p: (p.account, p.payout_id)):
            day = payout.arrival_date or (payout.created_at.date() if payout.created_at
                                          else None)
            if day is not None and day != self.data.day:
                continue
            members = by_payout.get((payout.account, payout.payout_id)) or \
                by_batch.get((payout.account, payout.batch_id or payout.payout_id), [])
            if not members and payout.source not in LINKED_PAYOUT_SOURCES:
                continue  # the source does not say which transactions a payout paid out
            currency = payout.amount.currency
            total = Decimal(0)
            for t in members:
                if t.net is not None and t.net.currency == currency:
                    total += t.net.amount
                else:
                    total += self.convert(t.signed_amount.amount, t.amount.currency,
                                          currency) or Decimal(0)
            ids = tuple(sorted(t.trace_id for t in members))
            tol = self.tolerance(payout.amount.amount, currency, False)
            method = SOURCE_METHODS.get(payout.source)
            if abs(total - payout.amount.amount) <= tol and members:
                groups.append(MatchGroup(
                    group_id=_key("payout", payout.account, payout.payout_id),
                    kind=GroupKind.PAYOUT, site=None, method=method, order_id=None,
                    trace_ids=ids, expected=payout.amount,
                    received=Money(amount=total, currency=currency), fee=None,
                    rule="payout_id" if payout.payout_id and by_payout.get(
                        (payout.account, payout.payout_id)) else "batch_id",
                    payout_id=payout.payout_id))
            else:
                found.append(Discrepancy(
                    key=_key(DiscrepancyClass.PAYOUT_MISMATCH, payout.account,
                             payout.payout_id),
                    cls=DiscrepancyClass.PAYOUT_MISMATCH, site=None, method=method,
                    order_id=None, trace_ids=ids, expected=payout.amount,
                    actual=Money(amount=total, currency=currency),
                    difference=Money(amount=total - payout.amount.amount, currency=currency),
                    detail=f"payout {payout.payout_id} of {payout.amount} pays out "
                           f"{len(members)} transaction(s) netting {total} {currency}",
                    payout_id=payout.payout_id))
        return groups, found


def settle(found: Iterable[Discrepancy], accepted: Iterable[str]) -> list[Discrepancy]:
    """The day's discrepancies as reported: each ``accepted`` when an operator's ``accept``
    targets its order, one of its traces or its payout (else ``open``), in the order a day's
    result lists them."""
    targets_accepted = set(accepted)
    final = []
    for d in found:
        targets = {f"trace:{t}" for t in d.trace_ids}
        if d.order_id and d.site:
            targets.add(order_target(d.site, d.order_id))
        if d.payout_id:
            targets.add(f"payout:{d.payout_id}")
        status = "accepted" if targets & targets_accepted else "open"
        final.append(d if d.status == status else replace(d, status=status))
    final.sort(key=lambda d: (d.cls.value, d.site or "", d.order_id or "", d.key))
    return final


def _refs_text(trace: PaymentTrace) -> str:
    refs = trace.references.model_dump(exclude_none=True)
    return ", ".join(f"{k}={v}" for k, v in sorted(refs.items())) or "no references"


def reconcile(rules: Rules, data: DayInput) -> DayResult:
    """Match one business day. Orders of earlier days and traces of later days inside the
    settlement lag may be given as context; only the day's orders, the day's traces and the
    day's payouts are reported."""
    return _Engine(rules, data).run()


__all__ = [
    "DELIVERY_EXPORT_COLUMNS",
    "DELIVERY_EXPORT_OPTIONAL",
    "ORDER_EXPORT_COLUMNS",
    "Correction",
    "CorrectionKind",
    "DayInput",
    "DayResult",
    "Discrepancy",
    "DiscrepancyClass",
    "GroupKind",
    "MatchGroup",
    "OrderOutcome",
    "Rules",
    "RulesError",
    "Totals",
    "delivery_from_export",
    "order_day",
    "order_from_export",
    "order_target",
    "reconcile",
    "rules_from_mapping",
    "settle",
]
