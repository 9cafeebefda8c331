"""How a SKU's sellable stock is shown on its sites: the quota policy. Pure functions.

The sum of what the sites show never exceeds what can be delivered: every batch's available
units are split among the sites that may sell them, in proportion to weights (recent sales
plus one, so a quiet site still gets a share), by the largest-remainder method, ties broken
by site code so the split is the same every time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from functools import lru_cache
from typing import Any, NamedTuple


class BatchShare(NamedTuple):
    """A site's share of one batch (a tuple: made for every batch of every SKU on every
    site it sells on in a full rebalance)."""

    batch_no: str
    available: int
    expires_on: date | None
    status: str


def split(units: int, sites: Sequence[str], weights: Mapping[str, float]) -> dict[str, int]:
    """Split ``units`` among ``sites`` by weight, largest remainder first, whole units only."""
    if units <= 0 or not sites:
        return {site: 0 for site in sites}
    if len(sites) == 1:  # most SKUs sell on one site: all of it, as the division gives
        return {sites[0]: units}
    w = {site: max(float(weights.get(site, 0.0)), 0.0) + 1.0 for site in sites}
    total = sum(w.values())
    exact = {site: units * w[site] / total for site in sites}
    shares = {site: int(exact[site]) for site in sites}
    left = units - sum(shares.values())
    order = sorted(sites, key=lambda s: (-(exact[s] - shares[s]), s))
    for site in order[:left]:
        shares[site] += 1
    return shares


def site_quotas(
    batches: Sequence[Any], *, sites: Sequence[str], weights: Mapping[str, float], on: date,
) -> dict[str, list[BatchShare]]:
    """Per site, the share of each batch it may show. ``batches`` are the SKU's batches
    (objects with batch_no, sites, expires_on, status and ``sellable(on)``); ``sites`` the
    SKU's selling sites, in any order."""
    ordered = sorted(sites)
    if len(ordered) == 1:  # most SKUs sell on one site: what ``split`` gives it, directly
        only = ordered[0]
        return {only: [BatchShare(batch.batch_no,
                                  max(units, 0) if not batch.sites or only in batch.sites
                                  else 0, batch.expires_on, batch.status)
                       for batch in batches for units in (batch.sellable(on),)]}
    out: dict[str, list[BatchShare]] = {site: [] for site in ordered}
    for batch in batches:
        units = batch.sellable(on)
        allowed = [s for s in ordered if not batch.sites or s in batch.sites]
        for site, share in split(units, allowed, weights).items():
            out[site].append(BatchShare(batch.batch_no, share, batch.expires_on, batch.status))
        for site in ordered:
            if site not in allowed:
                out[site].append(BatchShare(batch.batch_no, 0, batch.expires_on, batch.status))
    return out


def inventory_item(sku: str, shares: Sequence[BatchShare], as_of: str) -> dict[str, Any]:
    return {"sku": sku, "available": sum(s.available for s in shares), "as_of": as_of}


def batch_item(sku: str, share: BatchShare) -> dict[str, Any]:
    item: dict[str, Any] = {"sku": sku, "batch_no": share.batch_no,
                            "available": share.available,
                            "status": share.status if share.available else "sold_out"}
    if share.expires_on is not None:
        item["expires_at"] = _end_of(share.expires_on)
    return item


@lru_cache(maxsize=4096)
def _end_of(day: date) -> str:
    """The last second of a day, as the sites take an expiry (batches share few days)."""
    return f"{day.isoformat()}T23:59:59Z"
