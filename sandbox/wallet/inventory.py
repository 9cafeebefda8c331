"""``PUT /inventory:batch`` and ``PUT /batches:batch``: what vouchflow shows the site.

Inventory is the availability a site shows per SKU (0: unavailable). The site sells from it
(the sales generator decrements it and never sells past it), so ``available`` in
``inventory(site)`` is what the site shows now and ``shown`` what vouchflow last pushed. An
``as_of`` older than the one already applied for that SKU is ignored (outcome ``stale``), so
a late retry cannot roll the number back; a push of the number the site already shows is
``unchanged`` (its newer ``as_of`` is kept).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from sandbox.core import json_response
from sandbox.wallet.base import WalletBase
from sandbox.wallet.common import (
    MAX_BATCH,
    SKU_RE,
    SiteState,
    WalletError,
    json_body,
    micros,
    parse_time,
)

__all__ = ["BATCH_FIELDS", "INVENTORY_FIELDS", "InventoryMixin"]

INVENTORY_FIELDS = ("sku", "available", "as_of")
BATCH_FIELDS = ("sku", "batch_no", "available", "expires_at", "status")
_TEXT_MAX = 64


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _items(body: Any, what: str) -> list[Any]:
    items = body.get("items") if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise WalletError(422, "invalid", f'body must be {{"items": [{what}, ...]}}')
    if len(items) > MAX_BATCH:
        raise WalletError(422, "invalid", f"at most {MAX_BATCH} items per batch, got {len(items)}")
    return items


def _refuse(details: list[dict[str, Any]], total: int) -> None:
    if details:
        bad = len({d["index"] for d in details})
        unknown = sorted({d["sku"] for d in details if d.get("unknown_sku")})
        for d in details:
            d.pop("unknown_sku", None)
        message = f"{bad} of {total} items are invalid; nothing was applied"
        if unknown:
            message += f" (no product {', '.join(unknown)} on this site)"
        raise WalletError(422, "invalid", message, details)


class InventoryMixin(WalletBase):
    # ---- helpers ------------------------------------------------------------------------------

    def inventory(self, code: str) -> dict[str, dict[str, Any]]:
        """``{sku: {"available": shown now, "shown": last pushed, "as_of"}}``."""
        with self.lock:
            return {
                sku: {"available": e["available"], "shown": e["shown"], "as_of": e["as_of"]}
                for sku, e in sorted(self._site(code).inventory.items())
            }

    def available(self, code: str, sku: str) -> int | None:
        """What the site shows for a SKU now; ``None`` when it was never shown a number."""
        with self.lock:
            entry = self._site(code).inventory.get(sku)
            return None if entry is None else int(entry["available"])

    def set_inventory(
        self, code: str, available: Mapping[str, int], as_of: datetime | None = None
    ) -> None:
        """Show the site these numbers directly, as a push with ``as_of`` (default: the
        clock's now) would, stale ones ignored; no effect is recorded."""
        with self.lock:
            state = self._site(code)
            stamp = as_of.isoformat() if as_of is not None else self.clock().isoformat()
            items = [{"sku": sku, "available": n, "as_of": stamp} for sku, n in available.items()]
            details = self._check_inventory(state, items)
            if details:
                raise ValueError(f"invalid inventory: {details}")
            for item in items:
                self._apply_inventory(state, item, record=False)

    def batches(self, code: str) -> list[dict[str, Any]]:
        with self.lock:
            state = self._site(code)
            return [dict(state.batches[k]) for k in sorted(state.batches)]

    # ---- PUT /inventory:batch -----------------------------------------------------------------

    async def _put_inventory(self, request: Request) -> Response:
        try:
            state = self._site(request.path_params["site"])
            items = _items(await json_body(request), "{sku, available, as_of}")
            with self.lock:
                details = self._check_inventory(state, items)
                _refuse(details, len(items))
                results = [self._apply_inventory(state, item) for item in items]
            return json_response({"results": results})
        except WalletError as exc:
            return self._error(exc)

    def _check_inventory(self, state: SiteState, items: list[Any]) -> list[dict[str, Any]]:
        details: list[dict[str, Any]] = []
        seen: dict[str, int] = {}
        for i, item in enumerate(items):
            sku = item.get("sku") if isinstance(item, dict) else None

            def problem(field: str, message: str, sku: Any = sku, i: int = i, **more: Any) -> None:
                details.append({"index": i, "sku": sku, "field": field, "message": message, **more})

            if not isinstance(item, dict):
                problem("", "an inventory item must be a JSON object")
                continue
            for name in sorted(set(item) - set(INVENTORY_FIELDS)):
                problem(name, "unknown field")
            if not isinstance(sku, str) or not SKU_RE.match(sku):
                problem("sku", "must match [A-Za-z0-9_-]{1,64}")
            elif sku not in state.products:
                problem("sku", f"no product {sku} on site {state.site.code}", unknown_sku=True)
            elif sku in seen:
                problem("sku", f"duplicate of item {seen[sku]} in the same batch")
            if isinstance(sku, str):
                seen.setdefault(sku, i)
            if not _is_count(item.get("available")):
                problem("available", "must be an integer >= 0")
            try:
                parse_time(item.get("as_of"), "as_of")
            except ValueError as exc:
                problem("as_of", str(exc))
        return details

    def _apply_inventory(
        self, state: SiteState, item: Mapping[str, Any], record: bool = True
    ) -> dict[str, str]:
        sku, available = item["sku"], item["available"]
        as_of_us = micros(parse_time(item["as_of"], "as_of"))
        old = state.inventory.get(sku)
        if old is not None and as_of_us < old["as_of_us"]:
            return {"sku": sku, "outcome": "stale"}
        entry = {"available": available, "shown": available, "as_of": item["as_of"],
                 "as_of_us": as_of_us}  # fmt: skip
        state.inventory[sku] = entry
        if old is not None and old["available"] == available:
            return {"sku": sku, "outcome": "unchanged"}
        if not record:
            return {"sku": sku, "outcome": "updated"}
        self.effects.record(
            "inventory.updated", f"{state.site.code}:{sku}", site=state.site.code, sku=sku,
            available=available, previous=None if old is None else old["available"],
            as_of=item["as_of"],
        )  # fmt: skip
        return {"sku": sku, "outcome": "updated"}

    # ---- PUT /batches:batch -------------------------------------------------------------------

    async def _put_batches(self, request: Request) -> Response:
        try:
            state = self._site(request.path_params["site"])
            items = _items(await json_body(request), "Batch")
            with self.lock:
                details = self._check_batches(state, items)
                _refuse(details, len(items))
                results = [self._apply_batch(state, item) for item in items]
            return json_response({"results": results})
        except WalletError as exc:
            return self._error(exc)

    def _check_batches(self, state: SiteState, items: list[Any]) -> list[dict[str, Any]]:
        details: list[dict[str, Any]] = []
        seen: dict[tuple[str, str], int] = {}
        for i, item in enumerate(items):
            sku = item.get("sku") if isinstance(item, dict) else None

            def problem(field: str, message: str, sku: Any = sku, i: int = i, **more: Any) -> None:
                details.append({"index": i, "sku": sku, "field": field, "message": message, **more})

            if not isinstance(item, dict):
                problem("", "a batch must be a JSON object")
                continue
            for name in sorted(set(item) - set(BATCH_FIELDS)):
                problem(name, "unknown field")
            if not isinstance(sku, str) or not SKU_RE.match(sku):
                problem("sku", "must match [A-Za-z0-9_-]{1,64}")
            elif sku not in state.products:
                problem("sku", f"no product {sku} on site {state.site.code}", unknown_sku=True)
            batch_no = item.get("batch_no")
            if not isinstance(batch_no, str) or not batch_no.strip() or len(batch_no) > _TEXT_MAX:
                problem("batch_no", f"must be a non-empty string of at most {_TEXT_MAX} characters")
            elif isinstance(sku, str):
                if (sku, batch_no) in seen:
                    problem("batch_no", f"duplicate of item {seen[(sku, batch_no)]} in the same batch")
                seen.setdefault((sku, batch_no), i)
            if not _is_count(item.get("available")):
                problem("available", "must be an integer >= 0")
            if item.get("expires_at") is not None:
                try:
                    parse_time(item["expires_at"], "expires_at")
                except ValueError as exc:
                    problem("expires_at", str(exc))
            status = item.get("status")
            if not isinstance(status, str) or not status.strip() or len(status) > _TEXT_MAX:
                problem("status", "must be a non-empty string")
        return details

    def _apply_batch(self, state: SiteState, item: Mapping[str, Any]) -> dict[str, str]:
        sku, batch_no = item["sku"], item["batch_no"]
        new = {"sku": sku, "batch_no": batch_no, "available": item["available"],
               "expires_at": item.get("expires_at"), "status": item["status"]}  # fmt: skip
        old = state.batches.get((sku, batch_no))
        if old is not None and _batch_key(old) == _batch_key(new):
            return {"sku": sku, "batch_no": batch_no, "outcome": "unchanged"}
        state.batches[(sku, batch_no)] = new
        outcome = "created" if old is None else "updated"
        self.effects.record(
            f"batch.{outcome}", f"{state.site.code}:{sku}:{batch_no}", site=state.site.code,
            sku=sku, batch_no=batch_no, available=new["available"], status=new["status"],
        )  # fmt: skip
        return {"sku": sku, "batch_no": batch_no, "outcome": outcome}


def _batch_key(batch: Mapping[str, Any]) -> tuple[Any, ...]:
    expires = batch.get("expires_at")
    instant: datetime | None = parse_time(expires, "expires_at") if expires is not None else None
    return (batch["available"], instant, batch["status"])
