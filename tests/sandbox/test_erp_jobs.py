"""Asynchronous batches and idempotency keys (docs/erp-records.md, "Asynchronous batches")."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox.core import ServedSandbox, serve
from sandbox.erp import ErpSandbox

from .conftest import RECORDS, NetSuiteAuth
from .erp_helpers import (
    COLLECTION,
    batch,
    error_code,
    error_detail,
    error_path,
    job_result,
    new_key,
    wait_job,
)

JOBS = "/services/rest/async/v1/job"


def vendor(eid: str, **over: Any) -> dict[str, Any]:
    return {"externalId": eid, "companyName": f"Supplier {eid}", "currency": "SGD", **over}


@pytest.fixture(autouse=True)
def _job_settings(erp: ErpSandbox) -> Iterator[None]:
    yield
    erp.job_delay_s = 0.01


def test_create_batch(erp: ErpSandbox, erp_client: httpx.Client) -> None:
    items = [vendor("V-1"), vendor("V-2", currency=10), vendor("V-3"), "not an object", vendor("V-1")]
    r = batch(erp_client, "vendor", items)
    assert r.status_code == 202 and r.content == b""
    location = r.headers["Location"]
    assert location.startswith(str(erp_client.base_url).rstrip("/") + JOBS + "/")
    status = wait_job(erp_client, location)
    assert status["status"] == "completed" and status["completed"] is True
    assert status["id"] == location.rsplit("/", 1)[1]
    assert {link["rel"] for link in status["links"]} == {"self", "result"}
    results = erp_client.get(f"{location}/result").json()["items"]
    assert [(x["index"], x["status"]) for x in results] == [(0, 204), (1, 400), (2, 204), (3, 400), (4, 400)]
    assert results[0] == {"index": 0, "status": 204, "id": "1", "externalId": "V-1"}
    assert results[2]["id"] == "2"  # the bad item took no id
    bad = results[1]
    assert bad["externalId"] == "V-2" and "id" not in bad
    [detail] = bad["o:errorDetails"]
    assert detail["o:errorCode"] == "INVALID_PARAMETER" and detail["o:errorPath"] == "currency"
    assert results[3]["o:errorDetails"][0]["detail"] == "Item 3 is not a JSON object."
    assert results[4]["o:errorDetails"][0]["o:errorCode"] == "USER_ERROR"  # duplicate externalId
    # effects exactly as the single-record endpoint records them
    assert erp.effects.keys("vendor.created") == {"V-1": 1, "V-3": 1}
    assert erp.count("vendor") == 2


def test_upsert_batch(erp: ErpSandbox, erp_client: httpx.Client) -> None:
    erp.seed_records("vendor", [vendor("V-1")])
    items = [vendor("V-1"), vendor("V-2"), {"companyName": "no external id"}, vendor("bad id!")]
    results = job_result(erp_client, batch(erp_client, "vendor", items, method="PUT").headers["Location"])
    assert [x["status"] for x in results] == [204, 204, 400, 400]
    assert results[0]["id"] == "1" and results[1]["id"] == "2"
    assert results[2]["o:errorDetails"][0]["o:errorPath"] == "externalId"
    assert [e["kind"] for e in erp.effects.entries()] == ["vendor.unchanged", "vendor.created"]
    # a second run changes one
    items = [vendor("V-1", companyName="Renamed"), vendor("V-2")]
    results = job_result(erp_client, batch(erp_client, "vendor", items, method="PUT").headers["Location"])
    assert [x["status"] for x in results] == [204, 204]
    assert erp.effects.keys("vendor.updated") == {"V-1": 1}
    assert erp.effects.count("vendor.unchanged", "V-2") == 1


def test_items_run_in_order_and_may_refer_to_earlier_ones(erp: ErpSandbox, erp_client: httpx.Client) -> None:
    erp.seed_records("inventoryItem", [{"itemId": "SKU-1"}])
    items: list[dict[str, Any]] = [
        {"externalId": "B-1", "name": "B-1", "custrecord_vf_batch_sku": {"id": "1"}},
        {"externalId": "B-2", "name": "B-2", "custrecord_vf_batch_sku": {"id": "2"}},  # no item 2
    ]
    results = job_result(erp_client, batch(erp_client, "customrecord_vf_batch", items, method="PUT").headers["Location"])
    assert [x["status"] for x in results] == [204, 400]
    assert results[1]["o:errorDetails"][0]["o:errorCode"] == "INVALID_KEY_OR_REF"
    codes = [{"name": f"C{i}", "custrecord_vf_code_batch": {"id": "1"}, "externalId": f"C-{i}"} for i in range(100)]
    results = job_result(erp_client, batch(erp_client, "customrecord_vf_code", codes).headers["Location"])
    assert [x["index"] for x in results] == list(range(100))
    assert [x["id"] for x in results] == [str(i) for i in range(1, 101)]


@pytest.mark.parametrize(
    ("body", "headers", "fragment", "path"),
    [
        ({"items": [vendor(f"V-{i}") for i in range(101)]}, {}, "at most 100", "items"),
        ({"items": []}, {}, "at least one", "items"),
        ({"records": [vendor("V-1")]}, {}, '{"items"', "items"),
        ({"items": [vendor("V-1")], "extra": 1}, {}, "'extra'", "extra"),
        ({"items": [vendor("V-1")]}, {"Prefer": "transient"}, "respond-async", "Prefer"),
        ({"items": [vendor("V-1")]}, {"Content-Type": "application/json"}, "type=collection", "Content-Type"),
        ({"items": [vendor("V-1")]}, {"X-NetSuite-idempotency-key": "not-a-uuid"}, "UUID",
         "X-NetSuite-idempotency-key"),
    ],
)  # fmt: skip
def test_refused_batches(
    erp: ErpSandbox, erp_client: httpx.Client, body: Any, headers: dict[str, str], fragment: str, path: str
) -> None:
    all_headers = {"Prefer": "respond-async", "Content-Type": COLLECTION, **headers}
    r = erp_client.post(f"{RECORDS}/vendor", json=body, headers=all_headers)
    assert r.status_code == 400, r.text
    assert error_code(r) == "INVALID_PARAMETER" and fragment in error_detail(r)
    assert error_path(r) == path
    assert erp.jobs.jobs == {} and erp.effects.count() == 0


def test_put_on_a_collection_needs_respond_async(erp: ErpSandbox, erp_client: httpx.Client) -> None:
    r = erp_client.put(f"{RECORDS}/vendor", json={"items": [vendor("V-1")]})
    assert r.status_code == 400 and "respond-async" in error_detail(r)
    # a plain POST is still a single create
    assert erp_client.post(f"{RECORDS}/vendor", json=vendor("V-1")).status_code == 204


def test_idempotency_key_repeat_returns_the_first_job(erp: ErpSandbox, erp_client: httpx.Client) -> None:
    key = new_key()
    first = batch(erp_client, "vendor", [vendor("V-1"), vendor("V-2")], key=key)
    assert first.status_code == 202
    location = first.headers["Location"]
    wait_job(erp_client, location)
    effects = erp.effects.count()
    assert effects == 2
    for method, items in (("POST", [vendor("V-1")]), ("PUT", [vendor("V-9")]), ("POST", ["anything"])):
        again = batch(erp_client, "vendor", items, method=method, key=key.upper())
        assert again.status_code == 400
        assert error_code(again) == "IDEMPOTENCY_ERROR"
        assert again.headers["Location"] == location
    # even a body that would be refused: the key is checked first
    r = erp_client.post(f"{RECORDS}/customer", content=b"{",
                        headers={"Prefer": "respond-async", "Content-Type": COLLECTION,
                                 "X-NetSuite-idempotency-key": key})  # fmt: skip
    assert error_code(r) == "IDEMPOTENCY_ERROR"
    time.sleep(0.05)
    assert erp.effects.count() == effects and len(erp.jobs.jobs) == 1
    assert erp.count("vendor") == 2
    # the request log shows the keys
    assert sum(1 for e in erp.requests() if e["idempotency_key"] in (key, key.upper())) == 5


def test_lost_answer_then_retry_with_the_same_key(erp: ErpSandbox, erp_client: httpx.Client) -> None:
    key = new_key()
    erp.faults.set(drop_rate=1.0, drop_when="after", count=1, method="POST")
    with pytest.raises(httpx.TransportError):
        batch(erp_client, "vendor", [vendor("V-1")], key=key)
    retry = batch(erp_client, "vendor", [vendor("V-1")], key=key)
    assert error_code(retry) == "IDEMPOTENCY_ERROR"
    results = job_result(erp_client, retry.headers["Location"])
    assert results[0]["status"] == 204
    assert erp.effects.count("vendor.created", "V-1") == 1


def test_status_while_pending_and_result_before_completion(erp: ErpSandbox, erp_client: httpx.Client) -> None:
    erp.job_delay_s = 0.3
    location = batch(erp_client, "vendor", [vendor("V-1")]).headers["Location"]
    status = erp_client.get(location).json()
    assert status["status"] == "pending" and status["completed"] is False
    assert [link["rel"] for link in status["links"]] == ["self"]
    r = erp_client.get(f"{location}/result")
    assert r.status_code == 400 and "not completed" in error_detail(r)
    assert erp.effects.count() == 0
    assert wait_job(erp_client, location)["status"] == "completed"
    assert erp.effects.count("vendor.created") == 1
    for url in (f"{JOBS}/999", f"{JOBS}/999/result", f"{JOBS}/abc"):
        r = erp_client.get(url)
        assert r.status_code == 404 and error_code(r) == "NONEXISTENT_ID"


def test_reset_stops_a_pending_job(erp: ErpSandbox, erp_client: httpx.Client) -> None:
    erp.job_delay_s = 0.1
    batch(erp_client, "vendor", [vendor("V-1")])
    erp.reset()
    time.sleep(0.2)
    assert erp.count("vendor") == 0 and erp.effects.count() == 0


def test_latency_can_be_restricted_to_writes(erp: ErpSandbox, erp_client: httpx.Client) -> None:
    erp.faults.set(latency_ms=300, method="PUT")
    started = time.perf_counter()
    location = batch(erp_client, "vendor", [vendor("V-1")], method="PUT").headers["Location"]
    assert time.perf_counter() - started >= 0.3
    started = time.perf_counter()
    wait_job(erp_client, location)
    erp_client.get(f"{location}/result")
    assert time.perf_counter() - started < 0.2
    assert [e["fault"] for e in erp.requests()][:1] == ["latency"]
    assert all(e["fault"] is None for e in erp.requests()[1:])


def test_polls_count_against_the_concurrency_limit(erp: ErpSandbox, erp_served: ServedSandbox) -> None:
    erp.concurrency_limit = 1
    erp.faults.set(latency_ms=400, method="PUT")
    with httpx.Client(base_url=erp_served.base_url, auth=NetSuiteAuth(), timeout=10) as c:
        location = batch(c, "vendor", [vendor("V-1")]).headers["Location"]
        wait_job(c, location)
        answers: list[Any] = []
        slow = threading.Thread(target=lambda: answers.append(batch(c, "vendor", [vendor("V-2")], method="PUT")))
        slow.start()
        deadline = time.monotonic() + 2
        while erp.stats.admitted == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        r = c.get(location)
        slow.join()
        # a body-less answer (202) can reach the client before the server has accounted for
        # it (core finishes a request on its last body message), so give it a moment
        while erp.stats.in_flight and time.monotonic() < deadline:
            time.sleep(0.002)
    assert [a.status_code for a in answers] == [202]
    assert r.status_code == 429 and error_code(r) == "CONCURRENCY_LIMIT_EXCEEDED"
    stats = erp.stats.snapshot()
    assert stats["max_admitted"] == 1 and stats["max_in_flight"] == 2
    assert stats["rejected_concurrency"] == 1 and stats["in_flight"] == 0


def test_jobs_and_keys_survive_save_and_load(tmp_path: Path) -> None:
    path = tmp_path / "erp.json"
    key = new_key()
    erp = ErpSandbox(verify_auth=False)
    with serve(erp) as served, httpx.Client(base_url=served.base_url, timeout=10) as c:
        location = batch(c, "vendor", [vendor("V-1"), vendor("V-2", currency=1)], key=key).headers["Location"]
        results = job_result(c, location)
    erp.save(path)

    again = ErpSandbox.load(path, verify_auth=False)
    with serve(again) as served, httpx.Client(base_url=served.base_url, timeout=10) as c:
        job_url = f"{served.base_url}{JOBS}/{location.rsplit('/', 1)[1]}"
        assert c.get(job_url).json()["status"] == "completed"
        assert c.get(f"{job_url}/result").json()["items"] == results
        r = batch(c, "vendor", [vendor("V-3")], key=key)
        assert error_code(r) == "IDEMPOTENCY_ERROR" and r.headers["Location"] == job_url
        # new jobs get new ids
        nxt = batch(c, "vendor", [vendor("V-3")], key=new_key()).headers["Location"]
        assert int(nxt.rsplit("/", 1)[1]) == int(job_url.rsplit("/", 1)[1]) + 1
        wait_job(c, nxt)
    assert again.effects.count() == 1 and again.count("vendor") == 2


def test_an_unfinished_job_resumes_after_load(tmp_path: Path) -> None:
    path = tmp_path / "erp.json"
    erp = ErpSandbox(verify_auth=False, job_delay_s=30)
    with serve(erp) as served, httpx.Client(base_url=served.base_url, timeout=10) as c:
        location = batch(c, "vendor", [vendor("V-1"), vendor("V-2")], key=new_key()).headers["Location"]
        erp.save(path)  # saved while pending
    assert erp.count("vendor") == 0

    again = ErpSandbox.load(path, verify_auth=False)
    with serve(again) as served, httpx.Client(base_url=served.base_url, timeout=10) as c:
        results = job_result(c, f"{served.base_url}{JOBS}/{location.rsplit('/', 1)[1]}")
    assert [x["status"] for x in results] == [204, 204]
    assert again.effects.keys("vendor.created") == {"V-1": 1, "V-2": 1}
