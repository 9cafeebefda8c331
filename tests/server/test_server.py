"""vouchflow on a real Prefect server (PostgreSQL), two process workers, flows deployed from
prefect.yaml: the twelve site syncs at once within the ERP's concurrency limit, a failed run
retried through the API the UI uses, an approval answered through the API, and `up` run twice.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import httpx
import pytest

from sandbox.sites import normalize_sites
from tests.server.conftest import ERP_LIMIT, ROOT, WORKERS, PrefectServer

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

SITE_DEPLOYMENT = "sync-catalog/sync-catalog-site"


def expected_products(server: PrefectServer) -> Counter[str]:
    """How many SKUs each site sells, from the ERP's own records."""
    per_site: Counter[str] = Counter()
    for record in server.sandboxes.erp.records["inventoryItem"].values():
        for site in str(record.get("custitem_vf_sales_areas", "")).split(","):
            if site:
                per_site[site] += 1
    return per_site


async def _run_sites(server: PrefectServer, sites: list[str], **params: Any) -> list[Any]:
    from prefect.deployments import run_deployment

    async with server.client():
        runs = await asyncio.gather(*(
            run_deployment(SITE_DEPLOYMENT, parameters={"sites": [site], **params},
                           timeout=0, tags=["test"])
            for site in sites))
    return [run.id for run in runs]


async def _waiting_at_the_erp(server: PrefectServer, ids: list[Any], timeout_s: float
                              ) -> None:
    """Until every run is in its ERP read (the task that takes the ERP's slot)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + timeout_s
    async with server.client() as client:
        while True:
            tasks = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
            waiting = {t.flow_run_id for t in tasks if t.name.startswith("list-changed-items")
                       and t.state is not None and t.state.is_running()}
            if waiting >= set(ids):
                return
            assert time.monotonic() < deadline, \
                f"{len(waiting)} of {len(ids)} runs reached the ERP\n{server.tail_logs()}"
            await asyncio.sleep(0.5)


def test_twelve_site_syncs_at_once_stay_within_the_erp_limit_across_two_workers(
        prefect_server: PrefectServer) -> None:
    from prefect.concurrency.asyncio import concurrency

    server = prefect_server
    erp, wallet = server.sandboxes.erp, server.sandboxes.wallet
    sites = sorted(wallet.sites)
    assert len(sites) == 12
    # a SuiteQL read takes a while at the far end, so the runs overlap there
    erp.faults.set(latency_ms=3000, path_prefix="/services/rest/query")
    erp.stats.reset()

    async def scenario() -> dict[Any, Any]:
        # hold every ERP slot until all twelve runs wait for one, then let them go at once:
        # the runs start as processes on two busy cores, at different times
        release = asyncio.Event()
        held = asyncio.Event()

        async def hold() -> None:
            async with server.client(), concurrency("erp-123456-sb1", occupy=ERP_LIMIT,
                                                    strict=True):
                held.set()
                await release.wait()

        holder = asyncio.create_task(hold())
        await asyncio.wait_for(held.wait(), 60)
        try:
            ids = await _run_sites(server, sites)
            await _waiting_at_the_erp(server, ids, timeout_s=240)
            assert erp.stats.requests == 0  # nobody got past the limit while it was held
        finally:
            release.set()
            await holder
        return await server.wait_for_runs(ids, timeout_s=240)

    try:
        runs = asyncio.run(scenario())
    finally:
        erp.faults.clear()
    ids = list(runs)
    states = {str(r.id): r.state.name for r in runs.values()}
    assert set(states.values()) == {"Completed"}, f"{states}\n{server.tail_logs()}"

    stats = erp.stats
    assert stats.max_in_flight <= ERP_LIMIT, stats.snapshot()
    assert stats.rejected_concurrency == 0, stats.snapshot()
    assert stats.max_in_flight == ERP_LIMIT, \
        f"never reached the limit under load: {stats.snapshot()}"

    # both workers took part
    logs = server.worker_logs()
    assert len(logs) == WORKERS
    ran_by = {name: {i for i in map(str, ids) if f"submitting flow run '{i}'" in text}
              for name, text in logs.items()}
    assert all(ran_by.values()), ran_by
    assert set().union(*ran_by.values()) == set(map(str, ids))

    # and every site has its whole catalogue (a run for one site never hides items from
    # the others: its own watermark, no all-sites fingerprints)
    want = expected_products(server)
    for site in sites:
        assert len(wallet.products(site)) == want[site], site
    created = wallet.effects.keys("product.created")
    assert created and max(created.values()) == 1  # no product created twice


def test_a_failed_run_retried_through_the_api_pushes_only_unfinished_chunks(
        prefect_server: PrefectServer) -> None:
    server = prefect_server
    erp, wallet = server.sandboxes.erp, server.sandboxes.wallet
    site = "sg2"
    if len(wallet.products(site)) < expected_products(server)[site]:
        # run alone: bring the site up to date first, so only the new SKUs are pushed below
        runs = asyncio.run(server.wait_for_runs(asyncio.run(_run_sites(server, [site])),
                                                timeout_s=180))
        assert {r.state.name for r in runs.values()} == {"Completed"}
    site_def = next(s for s in normalize_sites(None) if s.code == site)
    spec = [{"code": site, "currency": site_def.currency, "timezone": site_def.timezone}]
    first_new = max(int(i) for i in erp.records["inventoryItem"]) + 1000
    report = erp.seed_inventory_items(120, 0, seed=99, start_id=first_new, sites=spec)
    new_skus = {r["itemId"] for r in erp.records["inventoryItem"].values()
                if int(r["id"]) >= first_new}
    assert len(new_skus) == 120, report
    path = f"/{site}/api/v1/products:batch"
    started_at = time.time()

    def pushes() -> list[dict[str, Any]]:
        return [r for r in wallet.requests()
                if r["path"] == path and r["t"] >= started_at]

    def created_new() -> int:
        return sum(1 for e in wallet.effects.entries("product.created")
                   if e["key"].split(":", 1)[-1] in new_skus)

    # slow pushes, so the test can break the site after two chunks went through
    wallet.faults.set(latency_ms=400, path_prefix=path)
    ids = asyncio.run(_run_sites(server, [site], chunk_size=20, chunk_concurrency=1))
    deadline = time.monotonic() + 120
    while created_new() < 40:
        assert time.monotonic() < deadline, server.tail_logs()
        time.sleep(0.05)
    # the site starts refusing our key: the chunk task's retries fail too, the run fails
    wallet.faults.set(error_rate=1.0, error_status=401, path_prefix=path)
    try:
        runs = asyncio.run(server.wait_for_runs(ids, timeout_s=120))
    finally:
        wallet.faults.clear()
    run = runs[ids[0]]
    assert run.state.name == "Failed", run.state
    assert_the_failed_run_automation_fired(server, started_at)
    done_before = created_new()
    ok_before = [r for r in pushes() if r["status"] == 200]
    assert 40 <= done_before < 120 and len(ok_before) * 20 == done_before

    # the operator's Retry in the UI: POST /flow_runs/{id}/set_state, Scheduled
    # "AwaitingRetry", forced; a worker picks the same flow run up again
    answer = httpx.post(f"{server.api_url}/flow_runs/{run.id}/set_state", json={
        "state": {"type": "SCHEDULED", "name": "AwaitingRetry",
                  "message": "Retry from the UI"}, "force": True}, timeout=10)
    assert answer.status_code in (200, 201), answer.text
    assert answer.json()["status"] == "ACCEPT"
    runs = asyncio.run(server.wait_for_runs(ids, timeout_s=120))
    run = runs[ids[0]]
    assert run.state.name == "Completed", f"{run.state}\n{server.tail_logs()}"
    assert run.run_count == 2

    # every new SKU reached the site exactly once, and the chunks that had finished were
    # not pushed again: one accepted request per chunk over both attempts
    assert created_new() == 120
    assert Counter(e["key"] for e in wallet.effects.entries("product.created")
                   if str(e.get("key", "")).startswith(f"{site}:")).most_common(1)[0][1] == 1
    ok = [r for r in pushes() if r["status"] == 200]
    assert len(ok) == 120 // 20, [(r["status"], r["t"]) for r in pushes()]


def assert_the_failed_run_automation_fired(server: PrefectServer, since: float) -> None:
    """automations/failed-runs.yaml, created by `server up`, reacted to a failure (its action
    ran after ``since``, a time.time())."""
    from datetime import UTC, datetime

    async def automation_id() -> str:
        async with server.client() as client:
            found = await client.read_automations_by_name("vouchflow-run-failed")
        assert len(found) == 1
        return str(found[0].id)

    resource = f"prefect.automation.{asyncio.run(automation_id())}"
    deadline = time.monotonic() + 60
    while True:
        answer = httpx.post(f"{server.api_url}/events/filter", timeout=10, json={
            "filter": {"any_resource": {"id": [resource]},
                       "event": {"prefix": ["prefect.automation.action."]},
                       "occurred": {"since": datetime.fromtimestamp(since, UTC).isoformat()}},
            "limit": 50})
        assert answer.status_code == 200, answer.text
        if answer.json()["events"]:
            return
        assert time.monotonic() < deadline, f"the automation did not fire: {answer.text[:2000]}"
        time.sleep(1)


def test_an_approval_is_answered_through_the_api(prefect_server: PrefectServer) -> None:
    from prefect import flow
    from prefect.flow_runs import resume_flow_run

    from flows.approvals import Approval, request_approval

    recorded: list[Approval] = []
    posted: list[str] = []

    @flow(name="approval-demo")
    async def closing(batch: str) -> dict[str, Any]:
        approval = await request_approval(
            f"remittance batch {batch}", {"net": "1,234.50 EUR", "open discrepancies": 2},
            record=recorded.append, poll_interval_s=1)
        if approval.approved:
            posted.append(batch)
        return approval.as_dict()

    async def scenario() -> tuple[dict[str, Any], str, Any]:
        async with prefect_server.client() as client:
            task = asyncio.create_task(closing("remit-20261101-card-sg1-v1"))
            deadline = time.monotonic() + 60
            paused = None
            while paused is None:
                assert time.monotonic() < deadline and not task.done()
                await asyncio.sleep(0.5)
                for run in await client.read_flow_runs(limit=20):
                    if run.state and run.state.is_paused() and \
                            run.flow_id == (await client.read_flow_by_name(
                                "approval-demo")).id:
                        paused = run
            keyset = paused.state.state_details.run_input_keyset
            description = (await client.read_flow_run_input(paused.id,
                                                            keyset["description"]))
            schema = json.loads(await client.read_flow_run_input(paused.id,
                                                                 keyset["schema"]))
            await resume_flow_run(paused.id, run_input={
                "decision": "approve", "operator": "op-7", "comment": "checked the two"})
            result = await asyncio.wait_for(task, 60)
            final = await client.read_flow_run(paused.id)
            return result, description, (schema, final)

    result, description, (schema, final) = asyncio.run(scenario())
    assert "remittance batch remit-20261101-card-sg1-v1" in description
    assert "1,234.50 EUR" in description
    assert set(schema["properties"]) >= {"decision", "operator", "comment"}
    assert result["approved"] and result["operator"] == "op-7"
    assert [a.operator for a in recorded] == ["op-7"] and recorded[0].comment == \
        "checked the two"
    assert posted == ["remit-20261101-card-sg1-v1"]
    assert final.state.name == "Completed"


def test_status_shows_the_deployments_and_up_twice_duplicates_nothing(
        prefect_server: PrefectServer) -> None:
    server = prefect_server

    async def inventory() -> dict[str, Any]:
        async with server.client() as client:
            return {
                "deployments": sorted(d.name for d in await client.read_deployments()),
                "limits": sorted(g.name for g in
                                 await client.read_global_concurrency_limits(limit=200)),
                "automations": sorted(a.name for a in await client.read_automations()),
                "pools": sorted(p.name for p in await client.read_work_pools()),
                "workers": sorted(w.name for w in await client.read_workers_for_work_pool(
                    "vouchflow")),
            }

    before = asyncio.run(inventory())
    state_before = json.loads((server.home / "server" / "state.json").read_text())
    again = server.cli("server", "up", "--workers", str(WORKERS), "--worker-limit", "6")
    assert again.returncode == 0, again.stderr
    assert "Prefect server running" in again.stdout
    after = asyncio.run(inventory())
    state_after = json.loads((server.home / "server" / "state.json").read_text())
    assert after == before
    assert [p["pid"] for p in state_after["processes"]] == \
        [p["pid"] for p in state_before["processes"]], again.stderr + server.tail_logs()
    assert "erp-123456-sb1" in after["limits"] and "wallet-sg1" in after["limits"]
    assert after["automations"].count("vouchflow-run-failed") == 1
    assert {"sync-catalog", "sync-catalog-site", "sync-inventory", "ingest-sales",
            "deliver-events"} <= set(after["deployments"])

    status = subprocess.run([sys.executable, "-m", "flows.cli", "status"],
                            env={**server.env, "PREFECT_API_URL": server.api_url},
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert status.returncode == 0, status.stderr
    out = status.stdout
    assert re.search(r"sync-catalog/sync-catalog-site\s+(Completed|Failed|no run yet)", out), out
    assert "ingest-sales/ingest-sales" in out and "no run yet" in out
    assert "open discrepancies: 0" in out
    assert "runs waiting for an approval (paused): 0" in out
