"""The vendor portal: token auth, uploads with row results, statements as JSON and CSV, and
one vendor never reaching another's data, on every route the app has."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator

import httpx
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from portal.app import create_app
from sandbox.core import serve
from state import procurement as proc
from state.crypto import Keyring
from state.db import get_engine, session_scope
from tests.state.procurement_world import Party, codes_csv, seed_catalog, vendor_with_po

pytestmark = pytest.mark.usefixtures("state_url")


@pytest.fixture
def app():
    return create_app(sites=dict)


@pytest.fixture
def world(app) -> tuple[Party, Party]:
    engine = get_engine()
    seed_catalog(engine)
    ring = Keyring.load()
    a = vendor_with_po(engine, ring, "Alpha Vouchers", quantity=5)
    b = vendor_with_po(engine, ring, "Bravo Cards", quantity=5)
    return a, b


def auth(party: Party) -> dict[str, str]:
    return {"Authorization": f"Bearer {party.token}"}


def codes_url(party: Party, line: int = 1) -> str:
    return f"/vendor/purchase-orders/{party.po_no}/lines/{line}/codes"


def test_upload_and_see_every_refused_row(app, world):
    a, _ = world
    client = TestClient(app)
    body = codes_csv(["ALPHACODE001,1111,2027-01-31", "ALPHACODE001,,", "bad code,,",
                      "ALPHACODE002,,1999-01-01", "ALPHACODE003,,"])
    response = client.post(codes_url(a) + "?file_name=%3Dalpha.csv", content=body,
                           headers={**auth(a), "Content-Type": "text/csv"})
    assert response.status_code == 201, response.text
    result = response.json()
    assert (result["status"], result["rows_total"], result["rows_accepted"],
            result["rows_rejected"]) == ("partially_accepted", 5, 2, 3)
    rows = client.get(result["rows_url"], headers=auth(a)).json()
    assert [(r["row"], r["rule"]) for r in rows["rejected"]] == [
        (3, "duplicate_in_file"), (4, "code_invalid"), (5, "expiry_past")]
    assert all(r["message"].startswith(f"=alpha.csv: row {r['row']}") for r in rows["rejected"])
    assert "ALPHACODE001" not in response.text + str(rows)
    listed = client.get(f"/vendor/uploads/{result['upload_no']}/rows.csv", headers=auth(a))
    table = list(csv.DictReader(io.StringIO(listed.text)))
    assert [int(r["row"]) for r in table] == [3, 4, 5] and table[0]["rule"] == "duplicate_in_file"
    assert table[0]["message"].startswith("'=alpha.csv")  # a spreadsheet never runs it
    upload = client.get(f"/vendor/uploads/{result['upload_no']}", headers=auth(a)).json()
    assert upload["po_no"] == a.po_no and upload["line_no"] == 1
    assert upload["content_hash"] and upload["size_bytes"] == len(body)


def test_statement_as_json_and_csv(app, world):
    a, _ = world
    client = TestClient(app)
    client.post(codes_url(a), content=codes_csv(["ALPHACODE011,,", "ALPHACODE012,,"]),
                headers=auth(a))
    with session_scope(get_engine()) as s:
        bill = proc.bill_received(s, a.po_no)
    dispute = client.post("/vendor/disputes", headers=auth(a), json={
        "subject_type": "bill", "subject_ref": bill.bill_no, "reason": "price"})
    assert dispute.status_code == 201, dispute.text
    data = client.get("/vendor/statement", headers=auth(a)).json()
    assert data["vendor"] == "Alpha Vouchers"
    assert [p["po_no"] for p in data["purchase_orders"]] == [a.po_no]
    assert data["purchase_orders"][0]["lines"][0]["received_quantity"] == 2
    assert [b["total"] for b in data["bills"]] == ["15.0000"]
    assert [d["subject_ref"] for d in data["open_disputes"]] == [bill.bill_no]
    text = client.get("/vendor/statement.csv", headers=auth(a)).text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert {r["section"] for r in rows} == {"purchase_order", "receipt", "bill", "dispute"}
    assert [r["amount"] for r in rows if r["section"] == "bill"] == ["15.0000"]


def test_write_off_upload(app, world):
    a, _ = world
    client = TestClient(app)
    response = client.post("/vendor/write-offs?file_name=redeemed.csv", headers=auth(a),
                           content=b"code,redeemed_at\nW1XYZ,2026-11-20T08:15:00+08:00\n"
                                   b"W1XYZ,2026-11-20T09:15:00+08:00\n")
    assert response.status_code == 201
    assert (response.json()["rows_accepted"], response.json()["rows_rejected"]) == (1, 1)


def test_refusals_before_reading(app, world):
    a, _ = world
    client = TestClient(app)
    assert client.get("/vendor/me").status_code == 401
    assert client.get("/vendor/me", headers={"Authorization": "Bearer vfv_nope"}).status_code \
        == 401
    too_big = client.post(codes_url(a), headers={**auth(a), "Content-Length": str(10**12)},
                          content=b"code\n")
    assert too_big.status_code == 413
    missing = client.post(f"/vendor/purchase-orders/{a.po_no}/lines/9/codes", headers=auth(a),
                          content=b"code\nX\n")
    assert missing.status_code == 404
    with session_scope(get_engine()) as s:
        proc.set_signature(s, a.contract_no, "revoked")
    blocked = client.post(codes_url(a), headers=auth(a), content=b"code\nALPHACODE099\n")
    assert blocked.status_code == 409 and "not signed" in blocked.json()["detail"]["message"]


# isolation: every route of the app ----------------------------------------------------------------
def _walk(routes: list, prefix: str = "") -> Iterator[tuple[str, APIRoute]]:
    """Every API route of the app, also inside included routers (which newer FastAPI keeps
    as their own objects rather than copying their routes into the app)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield prefix + route.path, route
        elif hasattr(route, "original_router"):
            yield from _walk(route.original_router.routes,
                             prefix + getattr(route.include_context, "prefix", ""))
        elif hasattr(route, "routes"):
            yield from _walk(route.routes, prefix + getattr(route, "path", ""))


def _vendor_routes(app) -> list[tuple[str, str, APIRoute]]:
    out = [(method, path, route) for path, route in _walk(app.routes)
           if path.startswith("/vendor") for method in sorted(route.methods) if method != "HEAD"]
    documented = {p for p in app.openapi()["paths"] if p.startswith("/vendor")}
    assert documented <= {path for _, path, _ in out}, "a /vendor route this walk cannot see"
    return out


# routes without a resource in their path, and what "another vendor's data" means for each
UNPARAMETERISED = {
    ("GET", "/vendor/"): "page",
    ("GET", "/vendor/me"): "read",
    ("GET", "/vendor/purchase-orders"): "read",
    ("GET", "/vendor/uploads"): "read",
    ("GET", "/vendor/statement"): "read",
    ("GET", "/vendor/statement.csv"): "read",
    ("POST", "/vendor/write-offs"): "own",
    ("POST", "/vendor/disputes"): "dispute",
}


def test_vendor_a_never_reaches_vendor_b_on_any_route(app, world):
    a, b = world
    client = TestClient(app)
    b_upload = client.post(codes_url(b), headers=auth(b),
                           content=codes_csv(["BRAVOCODE001,,"])).json()["upload_no"]
    with session_scope(get_engine()) as s:
        b_bill = proc.bill_received(s, b.po_no).bill_no
    b_params = {"po_no": b.po_no, "line_no": "1", "upload_no": b_upload}
    secrets_of_b = [b.name, b.slug, b.po_no, b_upload, b_bill, b.token]
    routes = _vendor_routes(app)
    assert len(routes) >= 12
    checked = 0
    for method, path, _route in routes:
        params = set(re.findall(r"{(\w+)}", path))
        unknown = params - set(b_params)
        assert not unknown, f"{method} {path}: teach this test what {unknown} of vendor B is"
        url = path.format(**b_params)
        body = codes_csv(["ALPHACODE777,,"]) if method == "POST" else None
        if params:
            as_a = client.request(method, url, headers=auth(a), content=body)
            assert as_a.status_code in (403, 404), f"{method} {path}: {as_a.status_code}"
            told = [x for x in secrets_of_b if x in as_a.text and x not in url]
            assert not told, f"{method} {path} told A about B: {told}"  # only what A sent
            if method == "GET":  # the same route works for its owner: the 404 is isolation
                assert client.request(method, url, headers=auth(b)).status_code == 200
        else:
            kind = UNPARAMETERISED.get((method, path))
            assert kind, f"{method} {path}: a new route; say what vendor B's data is for it"
            if kind == "page":
                assert client.get(url).status_code == 200
                continue
            if kind == "dispute":
                for subject, ref in (("bill", b_bill), ("upload", b_upload),
                                     ("purchase_order", b.po_no)):
                    as_a = client.post(url, headers=auth(a), json={
                        "subject_type": subject, "subject_ref": ref, "reason": "x"})
                    assert as_a.status_code in (403, 404), f"dispute on B's {subject}"
            else:
                as_a = client.request(method, url, headers=auth(a), content=body)
                assert as_a.status_code < 300, f"{method} {path}: {as_a.status_code}"
                assert not [s for s in secrets_of_b if s in as_a.text], f"{method} {path}"
        assert client.request(method, url, content=body).status_code == 401, f"{method} {path}"
        checked += 1
    assert checked == len(routes) - 1
    # and nothing A did touched B
    statement = client.get("/vendor/statement", headers=auth(b)).json()
    assert statement["open_disputes"] == []
    assert [p["lines"][0]["received_quantity"] for p in statement["purchase_orders"]] == [1]


# a real server, a body sent in many pieces ------------------------------------------------------------
def test_streamed_upload_over_http(app, world):
    a, _ = world

    def body() -> Iterator[bytes]:
        yield b"code,pin,expires_at\r\n"
        for i in range(5):
            yield f"STREAMED{i:04d},,\r\n".encode()
        yield b"STREAMED9999"  # no newline at the end: still a row

    with serve(app) as served, httpx.Client(base_url=served.base_url, timeout=30) as http:
        response = http.post(codes_url(a), content=body(),
                             headers={**auth(a), "Content-Type": "text/csv"})
    assert response.status_code == 201, response.text
    assert (response.json()["rows_accepted"], response.json()["rows_rejected"]) == (5, 1)
    assert response.json()["status"] == "partially_accepted"  # 6 rows, the line had 5
