"""A small, deterministic world for the sales flows: the catalogue synced, the pool stocked,
quotas shown on the sites, a day of sales generated."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from flows import sync_catalog as sc
from flows import sync_inventory as si
from sandbox import SandboxSet
from state import pool
from state.catalog import load_skus
from state.crypto import Keyring
from state.db import get_engine, session_scope

DAY_START = datetime(2026, 11, 21, 0, 0, tzinfo=UTC)
DAY_END = DAY_START + timedelta(hours=23)


def stock_the_pool(codes_per_sku: int = 40, api_units: int = 60) -> dict[str, list[str]]:
    """One batch per SKU (two for every third SKU, the second expiring sooner); code-pool
    batches get generated codes. Returns the codes by SKU."""
    engine = get_engine()
    keyring = Keyring.load()
    with session_scope(engine) as s:
        catalog = load_skus(s)
    codes: dict[str, list[str]] = {}
    for n, (code, sku) in enumerate(sorted(catalog.items())):
        if sku.status.value != "normal":
            continue
        batches = [(f"B-{code}-1", date(2027, 6, 30))]
        if n % 3 == 0:
            batches.append((f"B-{code}-2", date(2027, 1, 31)))
        for batch_no, expires in batches:
            with session_scope(engine) as s:
                pool.upsert_batch(
                    s, batch_no=batch_no, sku=code, issuance_mode=sku.issuance_mode.value,
                    unit_cost=Decimal("1.2500"), currency=sku.face_value.currency,
                    expiry_type="fixed_date", expires_on=expires,
                    quantity=api_units if sku.issuance_mode.value == "api" else None)
            if sku.issuance_mode.value == "code_pool":
                made = [f"{batch_no}-C{i:04d}" for i in range(codes_per_sku)]
                codes.setdefault(code, []).extend(made)
                pool.add_codes(engine, batch_no, [(c, None, expires) for c in made], keyring,
                               actor="test", system="test")
    return codes


def build_world(sandboxes: SandboxSet, *, orders: int = 60, seed: int = 11) -> list[dict]:
    asyncio.run(sc.sync_catalog(chunk_size=100))
    stock_the_pool()
    asyncio.run(si.sync_inventory())
    return sandboxes.wallet.generate_sales(orders, seed=seed, start=DAY_START, end=DAY_END,
                                           refund_rate=0.1)
