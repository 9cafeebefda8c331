"""``vouchflow demo``: the catalogue sync end to end against the local sandboxes.

Starts the ERP and wallet sandboxes (data kept under VOUCHFLOW_HOME/sandbox, so a second demo
sees the same systems), points the connectors at them, runs the ``sync-catalog`` flow through
Prefect (an ephemeral API unless PREFECT_API_URL is set) and prints what happened.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from state.db import get_engine, session_scope
from state.models import DeadLetter, DeadLetterStatus


def _open_dead_letters() -> dict[str, int]:
    with session_scope(get_engine()) as session:
        rows = session.execute(
            select(DeadLetter.source, func.count())
            .where(DeadLetter.status == DeadLetterStatus.OPEN)
            .group_by(DeadLetter.source)
        )
        return {source: n for source, n in rows}


def render_summary(result: dict[str, Any], *, sites: int, wallet_products: int,
                   open_letters: dict[str, int], seconds: float) -> str:
    outcomes = result.get("outcomes", {})
    modified = result["read"] - result["not_modified"]
    lines = [
        f"vouchflow demo: catalogue sync, ERP -> {sites} wallet sites ({seconds:.1f} s)",
        f"  read          {result['read']:>6}  ERP items ({modified} modified since the last run)",
        f"  changed       {result['changed']:>6}  product listings that differ from the sites",
        f"  pushed        {result['pushed']:>6}  upserts confirmed by the sites "
        f"(created {outcomes.get('created', 0)}, updated {outcomes.get('updated', 0)}, "
        f"unchanged {outcomes.get('unchanged', 0)})",
        f"  skipped       {result['skipped']:>6}  listings already up to date",
        f"  dead-lettered {result['dead_lettered'] + result['rejected']:>6}  this run",
        f"  dead letters  {sum(open_letters.values()):>6}  open in total"
        + (" (" + ", ".join(f"{k}: {v}" for k, v in sorted(open_letters.items())) + ")"
           if open_letters else ""),
        f"  on the sites  {wallet_products:>6}  products",
        "",
        "  see them:  .venv/bin/vouchflow deadletters list",
        "  run again: make demo   (the second run pushes nothing)",
    ]
    return "\n".join(lines)


def run_demo(home: Path, *, skus: int, invalid: int) -> int:
    from sandbox import serve_all

    with serve_all(home, erp_port=0, wallet_port=0, seed_skus=skus, invalid=invalid) as sandboxes:
        os.environ.update(sandboxes.env())
        from flows.sync_catalog import sync_catalog

        started = time.monotonic()
        result = asyncio.run(sync_catalog())
        seconds = time.monotonic() - started
        wallet_products = sandboxes.wallet.count()
        sites = len(sandboxes.site_urls())
    print(render_summary(result, sites=sites, wallet_products=wallet_products,
                         open_letters=_open_dead_letters(), seconds=seconds))
    return 0
