"""The sales generator: customers buying on the sites, deterministically from a seed.

An order is for products the site lists with status ``normal``; each line's quantity comes
out of the availability the site was shown by ``PUT /inventory:batch`` (a SKU never shown a
number is not sold, one at 0 is unavailable), so the sites never sell more than vouchflow
showed them, unless ``respect_availability=False`` (to oversell on purpose; what was sold
beyond the shown number is in ``oversold(site)``). Some orders are later refunded (and, with
``cancel_rate``, cancelled). Every order, refund and cancellation creates its webhook events.

``generate_sales`` makes a batch of orders spread between two times; ``start_sales`` keeps
making them in the background (thread ``sandbox-wallet-sales``) at the sandbox clock's now.
"""

from __future__ import annotations

import bisect
import heapq
import logging
import random
import string
import threading
import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sandbox.wallet.common import SiteState, format_stamp, micros
from sandbox.wallet.orders import PAYMENT_METHODS, OrdersMixin, _copy_order, provider_for

__all__ = ["DEFAULT_METHOD_WEIGHTS", "SalesMixin"]

log = logging.getLogger("sandbox")

DEFAULT_METHOD_WEIGHTS: dict[str, float] = {
    "card": 40, "paypal": 15, "bank_transfer": 8, "cod": 7, "wallet_balance": 22, "split": 8,
}  # fmt: skip
_UPPER = string.ascii_uppercase + string.digits
_ALNUM = string.ascii_letters + string.digits
_HOUR_US = 3_600 * 1_000_000


class _Planner:
    """Draws orders from one random stream; keeps per site the sorted SKUs it may sell."""

    def __init__(
        self,
        sites: Mapping[str, SiteState],
        codes: list[str],
        rng: random.Random,
        respect_availability: bool,
        method_weights: Mapping[str, float] | None,
    ) -> None:
        self.sites, self.codes, self.rng = sites, codes, rng
        self.respect = respect_availability
        weights = dict(method_weights or DEFAULT_METHOD_WEIGHTS)
        unknown = set(weights) - set(PAYMENT_METHODS)
        if unknown:
            raise ValueError(f"unknown payment methods {sorted(unknown)}")
        self.methods = [m for m in PAYMENT_METHODS if weights.get(m, 0) > 0]
        self.weights = [weights[m] for m in self.methods]
        if not self.methods:
            raise ValueError("no payment method has a weight > 0")
        self.sellable: dict[str, list[str]] = {}
        self.refresh()

    def refresh(self) -> None:
        for code in self.codes:
            state = self.sites[code]
            self.sellable[code] = sorted(
                sku for sku, p in state.products.items()
                if p["status"] == "normal"
                and (not self.respect or state.inventory.get(sku, {}).get("available", 0) > 0)
            )  # fmt: skip

    def order(self, stamp: int) -> tuple[SiteState, list[tuple[str, int]], str, dict[str, str]] | None:
        """One order's site, lines, customer and payment, taking the units from the site's
        shown availability; ``None`` when no site has anything to sell."""
        rng = self.rng
        candidates = [c for c in self.codes if self.sellable[c]]
        if not candidates:
            return None
        code = rng.choice(candidates)
        state, sellable = self.sites[code], self.sellable[code]
        r = rng.random()
        n_lines = min(1 if r < 0.80 else 2 if r < 0.95 else 3, len(sellable))
        skus = rng.sample(sellable, n_lines)
        lines = []
        for sku in skus:
            r = rng.random()
            quantity = 1 if r < 0.70 else 2 if r < 0.88 else 3 if r < 0.97 else rng.randint(4, 8)
            entry = state.inventory.get(sku)
            if self.respect:
                assert entry is not None
                quantity = min(quantity, entry["available"])
                entry["available"] -= quantity
                if entry["available"] == 0:
                    del sellable[bisect.bisect_left(sellable, sku)]
            else:
                shown = entry["available"] if entry is not None else 0
                if entry is not None:
                    entry["available"] = max(0, shown - quantity)
                if quantity > shown:
                    state.oversold[sku] = state.oversold.get(sku, 0) + quantity - shown
            lines.append((sku, quantity))
        customer = f"cust-{rng.randint(1, 99_999):05d}"
        method = rng.choices(self.methods, self.weights)[0]
        payment = {"method": method, "provider": provider_for(method),
                   "provider_reference": self._reference(method, state, stamp)}  # fmt: skip
        return state, lines, customer, payment

    def _reference(self, method: str, state: SiteState, stamp: int) -> str:
        rng = self.rng
        if method == "card":
            return "".join(rng.choices(string.digits, k=16))  # a PSP reference
        if method == "paypal":
            return "".join(rng.choices(_UPPER, k=17))
        if method == "bank_transfer":
            day = format_stamp(stamp, state.tz)[:10].replace("-", "")
            return f"BT{day}{rng.randint(0, 999_999):06d}"
        if method == "cod":
            return f"COD{rng.randint(0, 10**10 - 1):010d}"
        if method == "wallet_balance":
            return "wb_" + "".join(rng.choices("0123456789abcdef", k=20))
        return "ch_" + "".join(rng.choices(_ALNUM, k=24))  # split: a Stripe-style charge

    def after(
        self, order: Mapping[str, Any], stamp: int, refund_rate: float, cancel_rate: float,
        latest: int | None,
    ) -> tuple[str, int, str | None, int] | None:  # fmt: skip
        """What happens to an order later: ``("refund", when, line_id, quantity)``,
        ``("cancel", when, None, 0)`` or nothing. ``latest`` caps ``when``."""
        rng = self.rng
        r = rng.random()
        if r < refund_rate:
            line = rng.choice(order["lines"])
            quantity = rng.randint(1, line["quantity"])
            kind, line_id, lo, hi = "refund", line["line_id"], _HOUR_US // 6, 72 * _HOUR_US
        elif r < refund_rate + cancel_rate:
            kind, line_id, quantity, lo, hi = "cancel", None, 0, 60_000_000, 2 * _HOUR_US
        else:
            return None
        if latest is not None:  # spread over what is left before latest, never past it
            hi = max(1, min(hi, latest - stamp))
            lo = min(lo, hi)
        return kind, stamp + rng.randint(lo, hi), line_id, quantity


class SalesMixin(OrdersMixin):
    _sales_thread: threading.Thread | None = None
    _sales_stop: threading.Event | None = None
    _sales_made: int = 0

    def oversold(self, code: str) -> dict[str, int]:
        """Units sold beyond the shown availability (``respect_availability=False`` only)."""
        with self.lock:
            return dict(sorted(self._site(code).oversold.items()))

    def generate_sales(
        self,
        n_orders: int,
        *,
        seed: int,
        start: datetime,
        end: datetime,
        sites: Iterable[str] | None = None,
        refund_rate: float = 0.05,
        cancel_rate: float = 0.0,
        respect_availability: bool = True,
        method_weights: Mapping[str, float] | None = None,
    ) -> list[dict[str, Any]]:
        """Up to ``n_orders`` orders created between ``start`` and ``end`` (aware), fewer when
        the sites run out of what they may sell. The same seed on the same site data gives
        the same orders. Refunds (and cancellations) fall between their order and ``end``.
        Returns the orders as they end up (after their refunds), in creation order."""
        if start.tzinfo is None or end.tzinfo is None:
            raise ValueError("start and end must be timezone-aware")
        if end < start:
            raise ValueError("end is before start")
        if not 0 <= refund_rate + cancel_rate <= 1:
            raise ValueError("refund_rate + cancel_rate must be between 0 and 1")
        rng = random.Random(seed)
        start_us, end_us = micros(start), micros(end)
        with self.lock:
            codes = self._codes(sites)
            planner = _Planner(self.sites, codes, rng, respect_availability, method_weights)
            stamps = sorted(rng.randint(start_us, end_us) for _ in range(n_orders))
            later: list[tuple[int, int, str, str, str | None, int]] = []
            made: list[tuple[SiteState, str]] = []
            for n, stamp in enumerate(stamps):
                self._apply_due(later, stamp)
                planned = planner.order(stamp)
                if planned is None:
                    break
                state, lines, customer, payment = planned
                order = self._new_order(state, stamp, lines, customer, payment)
                made.append((state, order["order_id"]))
                nxt = planner.after(order, stamp, refund_rate, cancel_rate, end_us)
                if nxt is not None:
                    kind, when, line_id, quantity = nxt
                    heapq.heappush(later, (when, n, kind, state.site.code + "\0" + order["order_id"],
                                           line_id, quantity))
            self._apply_due(later, None)
            return [_copy_order(state.orders[order_id]) for state, order_id in made]

    def generate_refunds(
        self, n: int, *, seed: int, sites: Iterable[str] | None = None,
        at: datetime | None = None,
    ) -> list[dict[str, Any]]:  # fmt: skip
        """Refund ``n`` random lines of orders not fully refunded yet (a random quantity of
        each), now or ``at``: ``delivered`` then says whether vouchflow had delivered them."""
        rng = random.Random(seed)
        created: list[dict[str, Any]] = []
        with self.lock:
            stamp = micros(at) if at is not None else self._now()
            candidates = [
                (state, order_id, line["line_id"])
                for code in self._codes(sites)
                for state in [self.sites[code]]
                for order_id, order in sorted(state.orders.items())
                if order["status"] != "cancelled"
                for line in order["lines"]
            ]  # fmt: skip
            candidates = [c for c in candidates if c[0].lines[(c[1], c[2])].refundable > 0]
            for state, order_id, line_id in rng.sample(candidates, min(n, len(candidates))):
                line = state.lines[(order_id, line_id)]
                quantity = rng.randint(1, line.refundable)
                created.extend(dict(r) for r in self._refund(state, order_id, line_id,
                                                             quantity, stamp))
        return created

    # ---- background ---------------------------------------------------------------------------

    @property
    def sales_running(self) -> bool:
        return self._sales_thread is not None and self._sales_thread.is_alive()

    def start_sales(
        self,
        rate_per_s: float,
        *,
        seed: int = 0,
        sites: Iterable[str] | None = None,
        refund_rate: float = 0.05,
        refund_delay_s: tuple[float, float] = (2.0, 30.0),
        cancel_rate: float = 0.0,
        respect_availability: bool = True,
        method_weights: Mapping[str, float] | None = None,
    ) -> None:
        """Keep creating orders (Poisson arrivals at ``rate_per_s``) at the clock's now until
        ``stop_sales()``; a refunded order gets its refund ``refund_delay_s`` (uniform) later,
        so by then vouchflow may have delivered its codes (``delivered: true``)."""
        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be > 0")
        if self.sales_running:
            raise RuntimeError("sales are already running: stop_sales() first")
        with self.lock:
            codes = self._codes(sites)
            planner = _Planner(self.sites, codes, random.Random(seed), respect_availability,
                               method_weights)
        stop = threading.Event()
        self._sales_stop, self._sales_made = stop, 0

        def run() -> None:
            rng = planner.rng
            later: list[tuple[float, int, str, str, str | None, int]] = []
            n = 0
            while not stop.wait(rng.expovariate(rate_per_s)):
                try:
                    with self.lock:
                        self._apply_due(later, time.monotonic(), wall=True)
                        planner.refresh()
                        stamp = self._now()
                        planned = planner.order(stamp)
                        if planned is None:
                            continue
                        state, lines, customer, payment = planned
                        order = self._new_order(state, stamp, lines, customer, payment)
                        self._sales_made += 1
                        nxt = planner.after(order, stamp, refund_rate, cancel_rate, None)
                        if nxt is not None:
                            kind, _, line_id, quantity = nxt
                            due = time.monotonic() + rng.uniform(*refund_delay_s)
                            n += 1
                            heapq.heappush(later, (due, n, kind,
                                                   state.site.code + "\0" + order["order_id"],
                                                   line_id, quantity))
                except Exception:  # keep the demo going; the bug shows in the log
                    log.exception("wallet sales generator")

        self._sales_thread = threading.Thread(target=run, name="sandbox-wallet-sales",
                                              daemon=True)
        self._sales_thread.start()

    def stop_sales(self, timeout: float = 5.0) -> int:
        """Stop the background sales; returns how many orders they created."""
        thread, stop = self._sales_thread, self._sales_stop
        if stop is not None:
            stop.set()
        if thread is not None:
            thread.join(timeout)
        self._sales_thread = None
        return self._sales_made

    # ---- internals ----------------------------------------------------------------------------

    def _codes(self, sites: Iterable[str] | None) -> list[str]:
        codes = sorted(self.sites) if sites is None else sorted(set(sites))
        for code in codes:
            self._site(code)
        return codes

    def _apply_due(self, later: list[Any], until: float | None, *, wall: bool = False) -> None:
        """Apply the refunds/cancellations due by ``until`` (all when ``None``), each at its
        own time (or now, for the background's wall-clock schedule)."""
        while later and (until is None or later[0][0] <= until):
            when, _, kind, key, line_id, quantity = heapq.heappop(later)
            code, order_id = key.split("\0", 1)
            state = self.sites[code]
            stamp = self._now() if wall else int(when)
            order = state.orders.get(order_id)
            if order is None or order["status"] == "cancelled":
                continue
            if kind == "cancel":
                if order["status"] == "confirmed" and not any(
                    state.lines[(order_id, x["line_id"])].delivered for x in order["lines"]
                ):
                    self._cancel(state, order_id, stamp)
                continue
            line = state.lines[(order_id, line_id)]
            quantity = min(quantity, line.refundable)
            if quantity > 0:
                self._refund(state, order_id, line_id, quantity, stamp)
