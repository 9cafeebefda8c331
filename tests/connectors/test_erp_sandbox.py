"""The ERP client against the ERP sandbox: concurrency, SuiteQL past the row cap, async batches
with idempotency keys, lost answers, logins. Effects are counted in the sandbox."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

import pytest
from pydantic import SecretStr

from connectors.erp import ErpClient, ErpSettings
from connectors.errors import AuthError
from connectors.http import RetryPolicy
from connectors.limits import ConcurrencyLimiter
from sandbox.core import serve
from sandbox.erp import DEFAULT_CREDENTIALS, ErpSandbox

FAST = RetryPolicy(max_attempts=8, base_delay=0.01, max_delay=0.2)


@pytest.fixture
def erp():
    sandbox = ErpSandbox(concurrency_limit=5)
    with serve(sandbox) as served:
        yield sandbox, served.base_url


def settings(base_url: str, **over) -> ErpSettings:
    c = DEFAULT_CREDENTIALS
    data = dict(account=c.account, base_url=base_url, consumer_key=SecretStr(c.consumer_key),
                consumer_secret=SecretStr(c.consumer_secret), token_id=SecretStr(c.token_id),
                token_secret=SecretStr(c.token_secret), concurrency=5)
    data.update(over)
    return ErpSettings(**data)


def item(i: int, tag: str = "W") -> dict:
    return {"externalId": f"{tag}-{i:06d}", "itemId": f"{tag}-{i:06d}",
            "displayName": f"Voucher {i}", "custitem_vf_kind": "gift_card",
            "custitem_vf_currency": "SGD", "custitem_vf_sales_areas": "sg1",
            "custitem_vf_issuance_mode": "api", "custitem_vf_write_off_type": "on_delivery",
            "custitem_vf_status": "normal"}


def test_twenty_writers_upsert_twenty_thousand_items_within_the_account_limit(erp):
    sandbox, base = erp
    sandbox.faults.set(latency_ms=20, method="PUT")  # a write takes time, as in the real one
    writers, per_writer = 20, 1000
    limiter = ConcurrencyLimiter(5)  # one account: one limiter shared by every writer
    errors: list[BaseException] = []
    failed: Counter[str] = Counter()

    def writer(w: int) -> None:
        async def go() -> None:
            async with ErpClient(settings(base), retry=FAST, limiter=limiter) as client:
                mine = [item(w * per_writer + i) for i in range(per_writer)]
                batches = [mine[i:i + 100] for i in range(0, per_writer, 100)]
                results = await asyncio.gather(*(
                    client.batch("inventoryItem", b, key=f"writer-{w}-{n}")
                    for n, b in enumerate(batches)))
                failed.update(r.external_id for batch in results for r in batch if not r.ok)
        try:
            asyncio.run(go())
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and not failed
    created = sandbox.effects.keys("inventoryItem.created")
    assert len(created) == writers * per_writer and set(created.values()) == {1}
    assert sandbox.count("inventoryItem") == writers * per_writer
    stats = sandbox.stats
    assert stats.max_in_flight <= 5          # the far end never saw more than the limit
    assert stats.max_in_flight == 5          # ... and the load did reach it
    assert stats.rejected_concurrency == 0


def test_result_reads_go_out_between_the_batch_writes(erp):
    """Forty batches started at once: their result reads do not wait until every write has
    gone out. (They did: queued behind all the submits, they ran at the end, one after
    another, with the account's slots idle.)"""
    sandbox, base = erp
    sandbox.faults.set(latency_ms=20, method="PUT", path_prefix="/services/rest/record/")
    records = [item(i, "R") for i in range(4000)]

    async def go():
        async with ErpClient(settings(base), retry=FAST) as client:
            return await asyncio.gather(*(
                client.batch("inventoryItem", records[i:i + 100], key=f"reads-{i}")
                for i in range(0, 4000, 100)))

    results = asyncio.run(go())
    assert all(r.ok for batch in results for r in batch)
    log = sandbox.requests()
    puts = [n for n, r in enumerate(log) if r["method"] == "PUT"]
    reads = [n for n, r in enumerate(log) if r["path"].endswith("/result") and r["status"] == 200]
    assert len(puts) == 40 and len(reads) == 40
    assert sum(1 for n in reads if n < puts[-1]) >= 10  # about 30 when the machine is quiet
    assert sandbox.stats.max_in_flight == 5 and sandbox.stats.rejected_concurrency == 0


def test_a_job_not_done_when_first_read_is_polled_then_read(erp):
    """The results are asked for directly after the usual job time; a job still running
    answers 400 and is then polled (not at once: it has just said no) until completed."""
    sandbox, base = erp
    sandbox.job_delay_s = 0.15  # much slower than the ~40 ms the client expects
    records = [item(i, "L") for i in range(100)]  # expected job time 0.04 s

    async def go():
        async with ErpClient(settings(base), retry=FAST) as client:
            return await client.batch("inventoryItem", records, key="late-job")

    results = asyncio.run(go())
    assert [r.ok for r in results] == [True] * 100
    jobs = [r for r in sandbox.requests() if "/async/v1/job/" in r["path"]]
    kinds = [("result" if r["path"].endswith("/result") else "poll", r["status"]) for r in jobs]
    assert kinds[0] == ("result", 400) and kinds[-1] == ("result", 200)
    assert set(kinds[1:-1]) == {("poll", 200)}
    assert jobs[1]["t"] - jobs[0]["t"] >= 0.015  # the first poll waited after the refusal


def test_single_upserts_from_many_writers_never_exceed_the_limit(erp):
    sandbox, base = erp
    sandbox.faults.set(latency_ms=5, method="PUT")
    limiter = ConcurrencyLimiter(5)

    async def go() -> None:
        clients = [ErpClient(settings(base), retry=FAST, limiter=limiter) for _ in range(20)]
        try:
            await asyncio.gather(*(
                clients[i % 20].upsert("inventoryItem", f"S-{i:06d}", item(i, "S"))
                for i in range(1000)))
            # a repeat changes nothing at the far end
            await clients[0].upsert("inventoryItem", "S-000007", item(7, "S"))
        finally:
            for c in clients:
                await c.aclose()

    asyncio.run(go())
    assert len(sandbox.effects.keys("inventoryItem.created")) == 1000
    assert sandbox.effects.count("inventoryItem.updated") == 0
    assert sandbox.stats.max_in_flight == 5


def test_a_client_allowed_more_than_the_account_is_held_back_by_429s(erp):
    sandbox, base = erp
    sandbox.faults.set(latency_ms=5, method="PUT")

    async def go() -> None:
        async with ErpClient(settings(base, concurrency=12), retry=FAST,
                             limiter=ConcurrencyLimiter(12)) as client:
            await asyncio.gather(*(client.upsert("inventoryItem", f"O-{i:06d}", item(i, "O"))
                                   for i in range(300)))

    asyncio.run(go())
    assert sandbox.stats.rejected_concurrency > 0           # the account said no...
    assert len(sandbox.effects.keys("inventoryItem.created")) == 300  # ...and all got in
    assert set(sandbox.effects.keys("inventoryItem.created").values()) == {1}


def test_suiteql_over_250000_rows_returns_every_row_exactly_once(erp):
    sandbox, base = erp
    sandbox.seed_inventory_items(250_000, 0, seed=3)

    async def go() -> list[int]:
        ids: list[int] = []
        async with ErpClient(settings(base), retry=FAST) as client:
            async for rows in client.suiteql_by_key("id, itemid", "item"):
                ids.extend(int(r["id"]) for r in rows)
        return ids

    ids = asyncio.run(go())
    assert len(ids) == 250_000 and len(set(ids)) == 250_000
    assert ids == sorted(ids)


def test_a_repeated_batch_key_resolves_to_the_first_job(erp):
    sandbox, base = erp
    records = [item(i, "I") for i in range(50)]

    async def go():
        async with ErpClient(settings(base), retry=FAST) as client:
            first = await client.submit_batch("inventoryItem", records, key="batch-i-1")
            await client.wait_for_job(first)
            again = await client.submit_batch("inventoryItem", records, key="batch-i-1")
            return first, again, await client.job_results(again)

    first, again, results = asyncio.run(go())
    assert first == again and all(r.ok for r in results)
    assert len(sandbox.effects.keys("inventoryItem.created")) == 50
    assert sandbox.effects.count("inventoryItem.updated") == 0


def test_batch_answer_lost_after_the_job_started_is_not_run_twice(erp):
    sandbox, base = erp
    # creates (POST) are not idempotent by themselves: only the key keeps this exactly-once
    sandbox.faults.set(drop_rate=1.0, drop_when="after", count=1, method="POST",
                       path_prefix="/services/rest/record/")
    records = [{k: v for k, v in item(i, "P").items()} for i in range(20)]

    async def go():
        async with ErpClient(settings(base), retry=FAST) as client:
            return await client.batch("inventoryItem", records, key="create-p", upsert=False)

    results = asyncio.run(go())
    assert all(r.ok for r in results)
    assert len(sandbox.effects.keys("inventoryItem.created")) == 20
    assert set(sandbox.effects.keys("inventoryItem.created").values()) == {1}


def test_invalid_items_fail_alone_in_a_batch(erp):
    _sandbox, base = erp
    records = [item(i, "V") for i in range(5)]
    records[2]["custitem_vf_face_value"] = "not a number"

    async def go():
        async with ErpClient(settings(base), retry=FAST) as client:
            return await client.batch("inventoryItem", records, key="with-a-bad-one")

    results = asyncio.run(go())
    assert [r.ok for r in results] == [True, True, False, True, True]
    assert "custitem_vf_face_value" in str(results[2].error)


def test_invalid_login_fails_at_once_naming_the_account(erp):
    sandbox, base = erp

    async def go():
        async with ErpClient(settings(base, token_secret=SecretStr("wrong")), retry=FAST) as c:
            await c.get("inventoryItem", "1")

    with pytest.raises(AuthError, match=DEFAULT_CREDENTIALS.account):
        asyncio.run(go())
    assert sandbox.stats.requests == 1  # no retry storm


@pytest.mark.parametrize("alg", ["PS256", "ES256"])
def test_oauth2_client_credentials_with_a_jwt_assertion(erp, alg):
    from sandbox.erp import generate_key_pair

    sandbox, base = erp
    keys = generate_key_pair(alg)
    sandbox.register_oauth2_client("vf-client-1", "cert-1", keys.public_pem)
    oauth = settings(base, auth_method="oauth2", client_id=SecretStr("vf-client-1"),
                     certificate_id="cert-1", private_key=SecretStr(keys.private_pem),
                     jwt_algorithm=alg, consumer_key=SecretStr(""))

    async def go():
        async with ErpClient(oauth, retry=FAST) as client:
            await client.upsert("inventoryItem", "OA-1", item(1, "OA") | {"externalId": "OA-1",
                                                                          "itemId": "OA-1"})
            record = await client.get_by_external_id("inventoryItem", "OA-1")
            return record, client._client.auth

    record, auth = asyncio.run(go())
    assert record["itemId"] == "OA-1"
    assert auth.tokens_fetched == 1  # one token served both calls


def test_oauth2_with_an_unregistered_certificate_is_an_auth_error(erp):
    from sandbox.erp import generate_key_pair

    sandbox, base = erp
    keys = generate_key_pair("PS256")
    oauth = settings(base, auth_method="oauth2", client_id=SecretStr("nobody"),
                     certificate_id="cert-x", private_key=SecretStr(keys.private_pem))

    async def go():
        async with ErpClient(oauth, retry=FAST) as client:
            await client.get("inventoryItem", "1")

    with pytest.raises(AuthError, match="invalid_client"):
        asyncio.run(go())
    assert keys.private_pem not in "".join(sandbox.auth_failures)
