"""Wallet site orders and refunds <-> canonical; canonical orders -> ERP sales documents.
Pure functions, no I/O."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any

from canonical import Order, Refund, Site
from mappings.errors import MappingError, validated


def wallet_order_to_order(raw: Mapping[str, Any], *, site: str) -> Order:
    """A site's Order as the canonical Order (the site code is the one it came from, whatever
    the body says, so one site cannot write into another's orders)."""
    label = f"order {raw.get('order_id', '?')} of site {site}"
    body = dict(raw)
    if body.get("site") not in (None, site):
        raise MappingError(label, [_violation(
            "site", "same_site", f"says {body.get('site')!r}, arrived from {site!r}")])
    body["site"] = site
    order = validated("Order", body, label)
    assert isinstance(order, Order)
    return order


def wallet_refund_to_refund(raw: Mapping[str, Any], *, site: str) -> Refund:
    label = f"refund {raw.get('refund_id', '?')} of site {site}"
    refund = validated("Refund", {**raw, "site": site}, label)
    assert isinstance(refund, Refund)
    return refund


def _violation(path: str, rule: str, message: str) -> Any:
    from canonical.schema import Violation

    return Violation(path=path, rule=rule, message=message)


def sales_order_key(site: str, order_id: str) -> str:
    return f"so-{site}-{order_id}"


def fulfillment_key(site: str, order_id: str, line_id: str) -> str:
    return f"if-{site}-{order_id}-{line_id}"


def customer_key(site: str) -> str:
    return f"cust-{site}"


def batch_key(batch_no: str) -> str:
    return f"batch-{batch_no}"


def order_to_sales_order(order: Order, *, site: Site, customer_id: str,
                         item_ids: Mapping[str, str]) -> dict[str, Any]:
    """The ERP salesOrder for a site order (upserted by external id ``so-{site}-{order}``).
    ``item_ids`` maps SKU codes to the ERP's inventoryItem internal ids."""
    missing = sorted({line.sku for line in order.lines} - set(item_ids))
    if missing:
        raise MappingError(f"order {order.order_id} of site {order.site}", [_violation(
            "lines.sku", "known_item", f"no ERP item for {', '.join(missing)}")])
    lines = []
    for number, line in enumerate(order.lines, start=1):
        lines.append({
            "line": number,
            "item": {"id": item_ids[line.sku]},
            "quantity": line.quantity,
            "rate": line.unit_price.amount,
            "amount": line.total().amount,
            "custcol_vf_line_id": line.line_id,
            "custcol_vf_site": order.site,
        })
    body: dict[str, Any] = {
        "externalId": sales_order_key(order.site, order.order_id),
        "tranId": sales_order_key(order.site, order.order_id),
        "entity": {"id": customer_id},
        "tranDate": site.business_date(order.created_at).isoformat(),
        "currency": order.currency,
        "otherRefNum": order.order_id,
        "custbody_vf_site": order.site,
        "memo": f"{order.status.value}; {order.site} order {order.order_id}",
        "item": {"items": lines},
    }
    return body


def fulfillment(order: Order, line_id: str, *, site: Site, sales_order_id: str,
                item_ids: Mapping[str, str], batches: Sequence[tuple[str, int]],
                on: date) -> dict[str, Any]:
    """The ERP itemFulfillment of one delivered code-pool line: a line per batch the codes
    came from, so the book's stock and cost leave the right batches."""
    line = next(x for x in order.lines if x.line_id == line_id)
    return {
        "externalId": fulfillment_key(order.site, order.order_id, line_id),
        "tranId": fulfillment_key(order.site, order.order_id, line_id),
        "createdFrom": {"id": sales_order_id},
        "tranDate": on.isoformat(),
        "item": {"items": [
            {"line": n, "item": {"id": item_ids[line.sku]}, "quantity": quantity,
             "custcol_vf_batch_no": batch_no, "custcol_vf_line_id": line_id,
             "custcol_vf_site": order.site}
            for n, (batch_no, quantity) in enumerate(batches, start=1)
        ]},
    }
