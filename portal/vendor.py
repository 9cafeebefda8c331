"""The vendor portal: each vendor, with its own API token, uploads code files and write-off
files, reads the result of every row, and reads its statement.

Every route but the page takes ``Authorization: Bearer <vendor token>`` (``vouchflow vendors
add NAME`` prints it once; only its keyed hash is stored). What a route reads or changes is
looked up together with the caller's vendor id, so another vendor's purchase order, upload or
statement is simply not found (404): a vendor cannot even learn that it exists.

Uploads are the request body itself (``Content-Type: text/csv``; the file name in
``?file_name=``), streamed: the body is handed chunk by chunk to a worker thread that checks
and stores rows as they come (``state.vendor_uploads``), so a million-code file never sits in
memory. A body over the size limit is refused before reading when its ``Content-Length`` says
so, and stopped when it grows past it.
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import queue
from collections.abc import Callable, Iterator
from functools import partial
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import Engine, select
from starlette.requests import ClientDisconnect

from state import procurement as proc
from state import vendor_uploads as vu
from state.crypto import Keyring
from state.db import session_scope

log = logging.getLogger("vouchflow.portal.vendor")

MAX_PAGE = 1000
QUEUE_CHUNKS = 16
"""Body chunks waiting for the worker at most (about 1 MB): the client waits, not memory."""


class VendorPortalSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VOUCHFLOW_VENDOR_", extra="ignore")

    upload_max_bytes: int = Field(default=vu.MAX_UPLOAD_BYTES,
                                  description="Largest upload body accepted, in bytes.")


class DisputeIn(BaseModel):
    subject_type: str = Field(description="bill, upload, purchase_order or payment")
    subject_ref: str = Field(max_length=64)
    reason: str = Field(min_length=1, max_length=2000)


def _error(status: int, code: str, message: str) -> HTTPException:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return HTTPException(status, {"code": code, "message": message}, headers=headers)


def _refusal(exc: proc.ProcurementError) -> HTTPException:
    if isinstance(exc, proc.NotFound):
        return _error(404, "not_found", str(exc))
    if isinstance(exc, proc.Blocked):
        return _error(409, "conflict", str(exc))
    return _error(422, "invalid", str(exc))


def vendor_router(
    engine: Callable[[], Engine],
    *,
    keyring: Callable[[], Keyring] = Keyring.load,
    settings: Callable[[], VendorPortalSettings] = VendorPortalSettings,
) -> APIRouter:
    config = settings()
    keys: list[Keyring] = []

    def ring() -> Keyring:
        if not keys:
            keys.append(keyring())
        return keys[0]

    def caller(authorization: Annotated[str | None, Header()] = None) -> proc.Vendor:
        scheme, _, token = (authorization or "").partition(" ")
        vendor = None
        if scheme.lower() == "bearer" and token.strip():
            with session_scope(engine()) as s:
                vendor = proc.vendor_for_token(s, ring(), token.strip())
        if vendor is None:
            raise _error(401, "unauthorized", "a vendor token is required "
                         "(Authorization: Bearer <token>)")
        return vendor

    signed_in = Depends(caller)  # the calling vendor (a closure: no use in annotations)
    router = APIRouter(prefix="/vendor", tags=["vendor"])

    @router.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        """The upload-and-statement page (static: it calls this API with the token typed in)."""
        html = resources.files("portal").joinpath("vendor.html").read_text(encoding="utf-8")
        return HTMLResponse(html, headers={"Cache-Control": "no-store",
                                           "Content-Security-Policy": _CSP})

    @router.get("/me")
    def me(vendor: proc.Vendor = signed_in) -> dict[str, Any]:
        return {"name": vendor.name, "slug": vendor.slug, "currency": vendor.currency,
                "token_hint": vendor.token_hint}

    @router.get("/purchase-orders")
    def orders(vendor: proc.Vendor = signed_in) -> dict[str, Any]:
        with session_scope(engine()) as s:
            data = proc.statement(s, vendor.id)  # type: ignore[arg-type]
        return {"purchase_orders": data["purchase_orders"]}

    @router.get("/purchase-orders/{po_no}")
    def order(po_no: str, vendor: proc.Vendor = signed_in) -> dict[str, Any]:
        with session_scope(engine()) as s:
            try:
                po = proc.get_order(s, po_no, vendor.id)
            except proc.NotFound as exc:
                raise _refusal(exc) from None
            lines = [proc._row(line, proc.LINE_FIELDS) for line in proc.order_lines(s, po.id)]  # type: ignore[arg-type]
            return {**proc._row(po, proc.ORDER_FIELDS), "lines": lines}

    async def stream_into(request: Request, work: Callable[[Iterator[bytes]], vu.UploadResult]
                          ) -> vu.UploadResult:
        """Run ``work`` in a thread over the request body, handed over chunk by chunk."""
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > config.upload_max_bytes:
            raise _error(413, "too_large", f"an upload may have {config.upload_max_bytes} "
                         f"bytes, this one has {declared}")
        box: queue.Queue[bytes | BaseException | None] = queue.Queue(QUEUE_CHUNKS)

        def chunks() -> Iterator[bytes]:
            while True:
                item = box.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item

        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(None, work, chunks())

        async def hand(item: bytes | BaseException | None) -> bool:
            """Queue one item; False when the worker has stopped taking them."""
            delay = 0.0005
            while not job.done():
                try:
                    box.put_nowait(item)
                    return True
                except queue.Full:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.02)
            return False

        try:
            async for chunk in request.stream():
                if chunk and not await hand(chunk):
                    break
            else:
                await hand(None)
        except ClientDisconnect as exc:
            await hand(exc)
        except BaseException as exc:
            await hand(ConnectionAbortedError(str(exc)))
            raise
        try:
            return await job
        except proc.ProcurementError as exc:
            raise _refusal(exc) from None

    def uploaded(result: vu.UploadResult) -> JSONResponse:
        status = 413 if result.status == proc.UploadStatus.INTERRUPTED and result.message \
            and "larger than" in result.message else 201
        body = {**result.as_dict(), "rows_url": f"/vendor/uploads/{result.upload_no}/rows"}
        return JSONResponse(body, status_code=status)

    @router.post("/purchase-orders/{po_no}/lines/{line_no}/codes", status_code=201)
    async def upload_codes(
        po_no: str, line_no: int, request: Request, vendor: proc.Vendor = signed_in,
        file_name: Annotated[str, Query(max_length=255)] = "codes.csv",
    ) -> JSONResponse:
        """A codes file (``code,pin,expires_at``) for one line of one of the vendor's POs."""
        work = partial(vu.receive_code_file, engine(), ring(), vendor_id=vendor.id,
                       po_no=po_no, line_no=line_no, file_name=file_name,
                       actor=f"vendor:{vendor.slug}", max_bytes=config.upload_max_bytes)
        result = await stream_into(request, lambda chunks: work(chunks=chunks))
        log.info("vendor %s uploaded %s for %s line %s: %s, %d accepted, %d refused",
                 vendor.slug, result.upload_no, po_no, line_no, result.status,
                 result.rows_accepted, result.rows_rejected)
        return uploaded(result)

    @router.post("/write-offs", status_code=201)
    async def upload_write_offs(
        request: Request, vendor: proc.Vendor = signed_in,
        file_name: Annotated[str, Query(max_length=255)] = "write-offs.csv",
    ) -> JSONResponse:
        """A write-off file (``code,redeemed_at``): codes the vendor reports redeemed."""
        work = partial(vu.receive_write_off_file, engine(), ring(), vendor_id=vendor.id,
                       file_name=file_name, max_bytes=config.upload_max_bytes)
        result = await stream_into(request, lambda chunks: work(chunks=chunks))
        log.info("vendor %s uploaded write-offs %s: %s", vendor.slug, result.upload_no,
                 result.status)
        return uploaded(result)

    def own_upload(s: Any, vendor: proc.Vendor, upload_no: str) -> dict[str, Any]:
        try:
            upload = proc._get(s, proc.VendorUpload, proc.VendorUpload.upload_no, upload_no,
                               vendor.id)
        except proc.NotFound as exc:
            raise _refusal(exc) from None
        po = None
        if upload.po_line_id is not None:
            line = s.get(proc.PurchaseOrderLine, upload.po_line_id)
            po = (s.get(proc.PurchaseOrder, line.po_id).po_no, line.line_no)
        return {"id": upload.id, **vu.upload_view(upload, po)}

    @router.get("/uploads")
    def uploads(
        vendor: proc.Vendor = signed_in, before: Annotated[int | None, Query(ge=1)] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    ) -> dict[str, Any]:
        with session_scope(engine()) as s:
            query = select(proc.VendorUpload).where(proc.VendorUpload.vendor_id == vendor.id)
            if before is not None:
                query = query.where(proc.VendorUpload.id < before)  # type: ignore[operator]
            rows = list(s.scalars(query.order_by(proc.VendorUpload.id.desc()).limit(limit)))  # type: ignore[union-attr]
            found = [own_upload(s, vendor, u.upload_no) for u in rows]
        return {"uploads": [{k: v for k, v in u.items() if k != "id"} for u in found],
                "next_before": found[-1]["id"] if len(found) == limit else None}

    @router.get("/uploads/{upload_no}")
    def upload(upload_no: str, vendor: proc.Vendor = signed_in) -> dict[str, Any]:
        with session_scope(engine()) as s:
            found = own_upload(s, vendor, upload_no)
        return {k: v for k, v in found.items() if k != "id"}

    @router.get("/uploads/{upload_no}/rows")
    def upload_rows(
        upload_no: str, vendor: proc.Vendor = signed_in, after: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 500,
    ) -> dict[str, Any]:
        """The refused rows (by row number, after ``after``): rule, field, masked value and
        message. Every row not listed was accepted."""
        with session_scope(engine()) as s:
            found = own_upload(s, vendor, upload_no)
            rows = vu.upload_rows(s, found["id"], after=after, limit=limit)
        return {
            "upload_no": upload_no, "status": found["status"],
            "rows_total": found["rows_total"], "rows_accepted": found["rows_accepted"],
            "rows_rejected": found["rows_rejected"],
            "rejected": [{"row": r.row_no, "rule": r.rule, "field": r.field, "value": r.value,
                          "message": r.message} for r in rows],
            "next_after": rows[-1].row_no if len(rows) == limit else None,
        }

    @router.get("/uploads/{upload_no}/rows.csv")
    def upload_rows_csv(upload_no: str, vendor: proc.Vendor = signed_in) -> StreamingResponse:
        with session_scope(engine()) as s:
            upload_id = own_upload(s, vendor, upload_no)["id"]

        def lines() -> Iterator[str]:
            yield _csv_line(["row", "status", "rule", "field", "value", "message"])
            after = 0
            while True:
                with session_scope(engine()) as s:
                    rows = vu.upload_rows(s, upload_id, after=after, limit=MAX_PAGE)
                for r in rows:
                    yield _csv_line([r.row_no, "rejected", r.rule, r.field or "",
                                     r.value or "", r.message])
                if len(rows) < MAX_PAGE:
                    return
                after = rows[-1].row_no

        return StreamingResponse(lines(), media_type="text/csv; charset=utf-8", headers={
            "Content-Disposition": f'attachment; filename="{upload_no}-rows.csv"'})

    @router.get("/statement")
    def statement(vendor: proc.Vendor = signed_in) -> dict[str, Any]:
        """Purchase orders (with lines), receipts, bills, payments and open disputes."""
        with session_scope(engine()) as s:
            return {"vendor": vendor.name, **proc.statement(s, vendor.id)}  # type: ignore[arg-type]

    @router.get("/statement.csv")
    def statement_csv(vendor: proc.Vendor = signed_in) -> Response:
        with session_scope(engine()) as s:
            data = proc.statement(s, vendor.id)  # type: ignore[arg-type]
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=proc.STATEMENT_CSV_COLUMNS, restval="")
        writer.writeheader()
        writer.writerows({k: _cell(v) for k, v in row.items()}
                         for row in proc.statement_rows(data))
        return Response(out.getvalue(), media_type="text/csv; charset=utf-8", headers={
            "Content-Disposition": f'attachment; filename="statement-{vendor.slug}.csv"'})

    @router.post("/disputes", status_code=201)
    def dispute(body: DisputeIn, vendor: proc.Vendor = signed_in) -> dict[str, Any]:
        """Dispute one of the vendor's own bills, uploads, purchase orders or payments."""
        subjects = {"bill": (proc.VendorBill, proc.VendorBill.bill_no),
                    "upload": (proc.VendorUpload, proc.VendorUpload.upload_no),
                    "purchase_order": (proc.PurchaseOrder, proc.PurchaseOrder.po_no),
                    "payment": (proc.VendorPayment, proc.VendorPayment.payment_no)}
        if body.subject_type not in subjects:
            raise _error(422, "invalid", f"subject_type must be one of {', '.join(subjects)}")
        model, column = subjects[body.subject_type]
        try:
            with session_scope(engine()) as s:
                proc._get(s, model, column, body.subject_ref, vendor.id)
                found = proc.open_dispute(s, vendor.id, subject_type=body.subject_type,  # type: ignore[arg-type]
                                          subject_ref=body.subject_ref, reason=body.reason,
                                          raised_by=f"vendor:{vendor.slug}")
                return proc._row(found, proc.DISPUTE_FIELDS)
        except proc.ProcurementError as exc:
            raise _refusal(exc) from None

    return router


_CSP = ("default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; form-action 'none'; frame-ancestors 'none'")


def _cell(value: Any) -> Any:
    """A CSV cell a spreadsheet will not run as a formula (file names, reasons and messages
    come from vendors)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _csv_line(values: list[Any]) -> str:
    out = io.StringIO()
    csv.writer(out).writerow([_cell(v) for v in values])
    return out.getvalue()
