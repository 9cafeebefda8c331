"""Vendor uploads, streamed row by row: code files for a purchase order line, write-off files.

A file arrives as an iterable of byte chunks (the portal hands over the HTTP body as it
comes) and is never held whole: lines are cut as bytes (no UTF-8 sequence contains a newline),
each decoded and parsed on its own, so a broken line (bad quoting, bad bytes, too long) is one
refused row and the rest of the file goes on. Files are CSV (CONTRACTS.md): UTF-8 (a BOM is
accepted), comma-separated, header row required; codes files ``code,pin,expires_at`` (pin and
expires_at may be empty), write-off files ``code,redeemed_at``. A row is one line: codes never
span lines.

Code files. Each row is checked in order: the CSV itself (syntax, encoding, field count), the
code (present, no spaces or control characters, at most 128 characters, the SKU's code
format), the PIN, the expiry date (a date or an RFC 3339 time with offset, not past). Rows
that pass go to ``state.pool.add_codes`` (hashing, encryption, chunked transactions), which
refuses a code repeating an earlier row of the file, a code already in the pool (an earlier
upload of the same vendor is named; another vendor's codes are only "already in the pool")
and codes past what the PO line has left to receive. What is accepted becomes one batch
(frozen while the upload runs, so nothing is sold before the receipt exists) and, at the end,
one receipt at the line's unit cost. Every refused row is kept (``upload_row``) with a message
naming the file, the row, the field and the rule; codes and PINs appear masked (last four
characters). A file with refused rows also leaves a dead letter for operators.

Only one code upload runs per PO line at a time. A process that dies midway leaves its upload
``receiving``; once its heartbeat is older than ``STALE_AFTER`` the next upload of the line (or
``recover_stale_uploads``) finishes it as ``interrupted`` with what it had received.
"""

from __future__ import annotations

import csv
import hashlib
import re
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from itertools import chain
from typing import Any

from sqlalchemy import Engine, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from canonical import mask, now_utc
from canonical.batch import BatchStatus, ExpiryType
from canonical.sku import IssuanceMode
from state import pool
from state.crypto import Keyring, last4
from state.db import session_scope
from state.models import NO_EXPIRY_RANK, PoolBatch, PoolCode
from state.procurement import (
    Blocked,
    NotFound,
    ProcurementError,
    PurchaseOrder,
    PurchaseOrderLine,
    ReceivingPlan,
    SupplierContract,
    UploadKind,
    UploadRow,
    UploadStatus,
    Vendor,
    VendorUpload,
    WriteOff,
    _number,
    _placeholder,
    get_order_line,
    plan_receipt,
    record_receipt,
)
from state.store import DeadLetterItem, _insert, record_dead_letters

MAX_UPLOAD_BYTES = 256 * 1024 * 1024
"""A million codes with PINs and dates take about 60 MB; anything far beyond is not a file."""
MAX_LINE_BYTES = 4096
MAX_CODE_LENGTH = 128
STALE_AFTER = timedelta(minutes=15)
"""A receiving upload whose heartbeat is older than this is taken to be dead."""
HEARTBEAT_S = 2.0
FLUSH_ROWS = 2000
FUTURE_TOLERANCE = timedelta(minutes=5)
DEAD_LETTER_FLOW = "vendor_upload"
DEAD_LETTER_SAMPLE = 20

CODE_COLUMNS = ("code", "pin", "expires_at")
WRITE_OFF_COLUMNS = ("code", "redeemed_at")
BOM = b"\xef\xbb\xbf"

_CODE = re.compile(r"[^\s\x00-\x1f\x7f]{1,128}")  # MAX_CODE_LENGTH
_PIN = re.compile(r"[^\s\x00-\x1f\x7f]{1,64}")


class Rule(StrEnum):
    """Why a row (or a whole file) was refused: stable names vendors and tests can rely on."""

    EMPTY_FILE = "empty_file"
    HEADER = "header"
    TOO_LARGE = "too_large"
    ENCODING = "encoding"
    CSV_SYNTAX = "csv_syntax"
    LINE_TOO_LONG = "line_too_long"
    FIELD_COUNT = "field_count"
    CODE_MISSING = "code_missing"
    CODE_INVALID = "code_invalid"
    CODE_FORMAT = "code_format"
    PIN_INVALID = "pin_invalid"
    EXPIRY_INVALID = "expiry_invalid"
    EXPIRY_PAST = "expiry_past"
    DUPLICATE_IN_FILE = "duplicate_in_file"
    ALREADY_UPLOADED = "already_uploaded"
    ALREADY_IN_POOL = "already_in_pool"
    OVER_QUANTITY = "over_quantity"
    REDEEMED_AT_INVALID = "redeemed_at_invalid"
    REDEEMED_AT_FUTURE = "redeemed_at_future"
    ALREADY_WRITTEN_OFF = "already_written_off"


class UploadTooLarge(ProcurementError):
    pass


@dataclass(frozen=True)
class Problem:
    row: int
    rule: Rule
    field: str | None
    value: str | None
    """Masked for codes and PINs."""
    detail: str
    batch_no: str | None = None
    """For a code already in the pool: the batch holding it (to name the vendor's own earlier
    upload; never shown)."""

    def message(self, file_name: str) -> str:
        where = f"{file_name}: row {self.row}" + (f", {self.field}" if self.field else "")
        return f"{where}: {self.detail} (rule {self.rule.value})"


@dataclass
class UploadResult:
    upload_no: str
    status: str
    kind: str
    file_name: str
    rows_total: int = 0
    rows_accepted: int = 0
    rows_rejected: int = 0
    size_bytes: int = 0
    content_hash: str | None = None
    receipt_no: str | None = None
    batch_no: str | None = None
    message: str | None = None
    rejected_sample: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# reading the bytes ---------------------------------------------------------------------------
class _Meter:
    """Counts and hashes the bytes as they pass, and stops a body over the size limit."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self.sha = hashlib.sha256()

    def wrap(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            self.size += len(chunk)
            if self.size > self.max_bytes:
                raise UploadTooLarge(f"the file is larger than the {self.max_bytes} bytes "
                                     "an upload may have")
            self.sha.update(chunk)
            yield chunk


RawLine = tuple[int, bytes | None]
"""(row number, the line's bytes without its newline; None: longer than the limit)."""


def split_lines(chunks: Iterable[bytes], max_line_bytes: int = MAX_LINE_BYTES
                ) -> Iterator[RawLine]:
    """Cut a byte stream into numbered lines without holding more than one line in memory
    beyond the current chunk; a line longer than ``max_line_bytes`` comes out as None (its
    bytes are dropped as they arrive)."""
    row = 0
    rest = b""
    dropping = False
    for chunk in chunks:
        if not chunk:
            continue
        data = rest + chunk if rest else chunk
        parts = data.split(b"\n")
        rest = parts.pop()
        for raw in parts:
            row += 1
            if dropping:
                dropping = False
                yield row, None
            elif len(raw) > max_line_bytes:
                yield row, None
            else:
                yield row, raw
        if len(rest) > max_line_bytes:
            dropping, rest = True, b""
    if dropping:
        yield row + 1, None
    elif rest:
        yield row + 1, rest


Parsed = tuple[int, list[str] | Problem]


def parse_rows(lines: Iterable[RawLine]) -> Iterator[Parsed]:
    """Numbered CSV records, one per line; blank lines are skipped, a line that cannot be
    read is a ``Problem`` for its row."""
    first = True
    for row, raw in lines:
        if raw is None:
            yield row, Problem(row, Rule.LINE_TOO_LONG, None, None,
                               f"the line is longer than {MAX_LINE_BYTES} bytes")
            first = False
            continue
        if first:
            first = False
            if raw.startswith(BOM):
                raw = raw[3:]
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield row, Problem(row, Rule.ENCODING, None, None,
                               f"not UTF-8 (byte {exc.start + 1} of the line)")
            continue
        if not line or line.isspace():
            continue
        if "\x00" in line:
            yield row, Problem(row, Rule.CSV_SYNTAX, None, None, "the line holds a NUL byte")
            continue
        if '"' in line:
            try:
                records = list(csv.reader([line], strict=True))
            except csv.Error as exc:
                yield row, Problem(row, Rule.CSV_SYNTAX, None, None, f"broken CSV: {exc}")
                continue
            if len(records) != 1:
                yield row, Problem(row, Rule.CSV_SYNTAX, None, None,
                                   "broken CSV: a quoted field is not closed on its line")
                continue
            yield row, records[0]
        else:
            yield row, line.split(",")


def read_header(rows: Iterator[Parsed], expected: tuple[str, ...], required: tuple[str, ...]
                ) -> dict[str, int]:
    """Column positions from the header row; a missing or wrong header refuses the file."""
    wanted = ",".join(expected)
    for row, record in rows:
        if isinstance(record, Problem):
            raise _FileRefused(Rule.HEADER, f"row {row}: the header row cannot be read "
                               f"({record.detail}); expected {wanted}")
        names = [n.strip().lower() for n in record]
        if not set(required) & set(names):
            raise _FileRefused(Rule.HEADER, f"row {row}: the header row is missing: the file "
                               f"must start with {wanted}")
        unknown = [n for n in names if n not in expected]
        if unknown:
            raise _FileRefused(Rule.HEADER, f"row {row}: unknown column(s) "
                               f"{', '.join(repr(n) for n in unknown)}; expected {wanted}")
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise _FileRefused(Rule.HEADER, f"row {row}: column(s) {', '.join(twice)} twice")
        absent = [n for n in required if n not in names]
        if absent:
            raise _FileRefused(Rule.HEADER, f"row {row}: column(s) {', '.join(absent)} "
                               f"missing; expected {wanted}")
        return {n: names.index(n) for n in names}
    raise _FileRefused(Rule.EMPTY_FILE, f"the file has no header row (expected {wanted})")


class _FileRefused(Exception):
    def __init__(self, rule: Rule, detail: str) -> None:
        super().__init__(detail)
        self.rule, self.detail = rule, detail


def _parse_expiry(text: str) -> date:
    if len(text) == 10:
        return date.fromisoformat(text)
    at = datetime.fromisoformat(text)
    if at.tzinfo is None:
        raise ValueError("a time needs its offset")
    return at.date()


def _parse_redeemed(text: str) -> datetime:
    at = datetime.fromisoformat(text)
    if at.tzinfo is None or "T" not in text.upper():
        raise ValueError("not a time with offset")
    return at.astimezone(UTC)


# the bookkeeping of a running upload ---------------------------------------------------------
class _Run:
    """One upload in progress: its row, the refused rows waiting to be written, the heartbeat."""

    def __init__(self, engine: Engine, upload: VendorUpload, vendor: Vendor) -> None:
        self.engine = engine
        self.upload_id: int = upload.id  # type: ignore[assignment]
        self.upload_no = upload.upload_no
        self.file_name = upload.file_name
        self.vendor_id: int = vendor.id  # type: ignore[assignment]
        self.vendor_source = f"vendor:{vendor.slug}"
        self.rows_total = 0
        self.rejected = 0
        self.pending: list[Problem] = []
        self.sample: list[Problem] = []
        self.stopped: str | None = None
        """Why the body stopped early (connection lost, too large), if it did."""
        self._beat = time.monotonic()
        self._lock = threading.Lock()
        """Refusals come from the reading thread and from the pool's writing thread."""

    def refuse(self, problem: Problem) -> None:
        with self._lock:
            self.rejected += 1
            self.pending.append(problem)

    def tick(self) -> None:
        """Between chunks (never inside another transaction): write refused rows, beat."""
        now = time.monotonic()
        if len(self.pending) >= FLUSH_ROWS or now - self._beat >= HEARTBEAT_S:
            self.flush()
            self._beat = now

    def resolve(self, session: Session, problems: list[Problem]) -> list[Problem]:
        return problems

    def flush(self) -> None:
        with self._lock:  # never held while waiting for the database
            taken, self.pending = self.pending, []
            rejected = self.rejected
        with session_scope(self.engine) as session:
            problems = self.resolve(session, taken)
            self.sample.extend(problems[:DEAD_LETTER_SAMPLE - len(self.sample)])
            if problems:
                session.execute(
                    _insert(session, UploadRow.__table__).on_conflict_do_nothing(
                        index_elements=["upload_id", "row_no"]),
                    [{"upload_id": self.upload_id, "row_no": p.row, "rule": p.rule.value,
                      "field": p.field, "value": p.value,
                      "message": p.message(self.file_name)[:1000]} for p in problems])
            session.execute(update(VendorUpload).where(VendorUpload.id == self.upload_id)
                            .values(rows_total=self.rows_total, rows_rejected=rejected,
                                    updated_at=now_utc()))

    def stop(self, reason: str) -> None:
        self.stopped = reason

    def sample_rows(self) -> list[dict[str, Any]]:
        return [{"row": p.row, "rule": p.rule.value, "field": p.field, "value": p.value,
                 "message": p.message(self.file_name)} for p in self.sample]


def _guarded(run: _Run, chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The body's chunks; a body that breaks off or grows too large ends the stream (what was
    read is kept) and says why."""
    try:
        yield from chunks
    except UploadTooLarge as exc:
        run.stop(f"{exc}: rows after the last one read were not received")
    except Exception as exc:  # the connection or the client went away
        run.stop(f"the upload broke off ({exc.__class__.__name__}): rows after the last one "
                 "read were not received")


def _new_upload(session: Session, vendor: Vendor, kind: str, file_name: str,
                po_line_id: int | None) -> VendorUpload:
    now = now_utc()
    upload = VendorUpload(upload_no=_placeholder(), vendor_id=vendor.id, kind=kind,
                          file_name=_clean_name(file_name), po_line_id=po_line_id,
                          created_at=now, updated_at=now)
    session.add(upload)
    session.flush()
    upload.upload_no = _number("upl", vendor.slug, upload.id)  # type: ignore[arg-type]
    if kind == UploadKind.CODES:
        upload.batch_no = _number("b", vendor.slug, upload.id, "u")  # type: ignore[arg-type]
    session.flush()
    return upload


def _clean_name(name: str) -> str:
    name = re.sub(r"[\x00-\x1f\x7f]", "", name or "").strip().replace("\\", "/")
    return (name.rsplit("/", 1)[-1] or "upload.csv")[:255]


# code files -----------------------------------------------------------------------------------
class _CodeRun(_Run):
    def __init__(self, engine: Engine, upload: VendorUpload, plan: ReceivingPlan) -> None:
        super().__init__(engine, upload, plan.vendor)
        self.plan = plan
        self.batch_no: str = upload.batch_no  # type: ignore[assignment]
        self.row_of = array("q")
        """Row number of each code handed to the pool, by its position there."""
        self.uploads_by_batch: dict[str, str | None] = {}

    def pool_refusal(self, refused: pool.RefusedCode) -> None:
        row = self.row_of[refused.position - 1]
        value = refused.masked
        if refused.rule is pool.RefusalRule.REPEATED and refused.first_position:
            first = self.row_of[refused.first_position - 1]
            self.refuse(Problem(row, Rule.DUPLICATE_IN_FILE, "code", value,
                                f"code {value} repeats row {first} of this file"))
        elif refused.rule is pool.RefusalRule.OVER_LIMIT:
            line = self.plan.line
            self.refuse(Problem(row, Rule.OVER_QUANTITY, "code", value,
                                f"purchase order {self.plan.order.po_no} line {line.line_no} "
                                f"had {self.plan.open_quantity} of {line.quantity} codes left "
                                "to receive; this code is beyond them"))
        else:
            self.refuse(Problem(row, Rule.ALREADY_IN_POOL, "code", value,
                                f"code {value} is already in the code pool",
                                batch_no=refused.batch_no))

    def resolve(self, session: Session, problems: list[Problem]) -> list[Problem]:
        """Name the earlier upload of a code already in the pool when it was this vendor's;
        another vendor's codes are not this vendor's business."""
        batches = {p.batch_no for p in problems if p.batch_no}
        unknown = sorted(batches - set(self.uploads_by_batch))
        if unknown:
            found = dict(session.execute(select(VendorUpload.batch_no, VendorUpload.upload_no)
                                         .where(VendorUpload.batch_no.in_(unknown),  # type: ignore[union-attr]
                                                VendorUpload.vendor_id == self.vendor_id)).all())
            self.uploads_by_batch.update({b: found.get(b) for b in unknown})
        out = []
        for p in problems:
            earlier = self.uploads_by_batch.get(p.batch_no) if p.batch_no else None
            if earlier:
                p = Problem(p.row, Rule.ALREADY_UPLOADED, p.field, p.value,
                            f"code {p.value} was uploaded before (upload {earlier})")
            out.append(p)
        return out


def _row_code(row: int, record: list[str], width: int, ic: int) -> str | Problem:
    """The row's code, if the row has the header's fields and the code could be a code."""
    if len(record) != width:
        return Problem(row, Rule.FIELD_COUNT, None, None,
                       f"{len(record)} field(s), the header has {width}")
    code = record[ic].strip()
    if not code:
        return Problem(row, Rule.CODE_MISSING, "code", None, "the code is empty")
    if _CODE.fullmatch(code) is None:
        shown = mask(code[:MAX_CODE_LENGTH])
        return Problem(row, Rule.CODE_INVALID, "code", shown,
                       f"code {shown} has spaces or control characters, or more than "
                       f"{MAX_CODE_LENGTH} characters")
    return code


def _code_rows(run: _CodeRun, rows: Iterator[Parsed], columns: dict[str, int], today: date
               ) -> Iterator[pool.CodeIn]:
    """The rows that pass the checks a row can make on its own, as the pool takes them."""
    width = len(columns)
    ic, ip, ie = columns["code"], columns.get("pin"), columns.get("expires_at")
    fmt = re.compile(run.plan.code_format) if run.plan.code_format else None
    sku = run.plan.line.sku
    pin_ok = _PIN.fullmatch
    expiries: dict[str, date | str] = {}
    row_of = run.row_of
    refuse = run.refuse
    seen = 0
    for row, record in rows:
        run.rows_total += 1
        seen += 1
        if seen >= 1000:
            seen = 0
            run.tick()
        code = record if isinstance(record, Problem) else _row_code(row, record, width, ic)
        if isinstance(code, Problem):
            refuse(code)
            continue
        if fmt is not None and fmt.fullmatch(code) is None:
            refuse(Problem(row, Rule.CODE_FORMAT, "code", mask(code),
                           f"code {mask(code)} does not match the code format of SKU {sku} "
                           f"({fmt.pattern})"))
            continue
        pin = record[ip].strip() if ip is not None else ""
        if pin and not pin_ok(pin):
            refuse(Problem(row, Rule.PIN_INVALID, "pin", mask(pin[:64]),
                           "the PIN has spaces or control characters, or more than 64 "
                           "characters"))
            continue
        expires: date | None = None
        text = record[ie].strip() if ie is not None else ""
        if text:
            parsed = expiries.get(text)
            if parsed is None:
                try:
                    got = _parse_expiry(text)
                    parsed = got if got >= today else f"past:{got}"
                except ValueError:
                    parsed = "invalid"
                if len(expiries) < 10_000:
                    expiries[text] = parsed
            if isinstance(parsed, str):
                if parsed == "invalid":
                    refuse(Problem(row, Rule.EXPIRY_INVALID, "expires_at", text[:64],
                                   f"{text[:64]!r} is not a date (YYYY-MM-DD) or an RFC 3339 "
                                   "time with offset"))
                else:
                    refuse(Problem(row, Rule.EXPIRY_PAST, "expires_at", text[:64],
                                   f"the code expired on {parsed[5:]} (before {today})"))
                continue
            expires = parsed
        row_of.append(row)
        yield code, pin or None, expires


def receive_code_file(
    engine: Engine, keyring: Keyring, *, vendor_id: int, po_no: str, line_no: int,
    file_name: str, chunks: Iterable[bytes], actor: str | None = None,
    max_bytes: int = MAX_UPLOAD_BYTES, today: date | None = None,
    chunk_size: int = pool.CODE_CHUNK,
) -> UploadResult:
    """Stream a vendor's codes file for one of its PO lines into the pool (see the module's
    docstring). Raises ``NotFound`` (not this vendor's line) or ``Blocked`` (order not open,
    contract not signed, nothing left to receive, another upload of the line running) before
    reading anything; after that, every outcome is an ``UploadResult``."""
    today = today or datetime.now(UTC).date()
    with session_scope(engine, immediate=True) as session:
        _, line = get_order_line(session, po_no, line_no, vendor_id)
        _recover_line(session, line.id)  # type: ignore[arg-type]
        plan = plan_receipt(session, line.id, vendor_id=vendor_id,  # type: ignore[arg-type]
                            mode=IssuanceMode.CODE_POOL.value, on=today)
        try:
            with session.begin_nested():
                upload = _new_upload(session, plan.vendor, UploadKind.CODES, file_name,
                                     line.id)
        except IntegrityError:
            raise Blocked(f"purchase order {po_no} line {line_no}: another upload for this "
                          "line is running; try again when it has finished") from None
    run = _CodeRun(engine, upload, plan)
    meter = _Meter(max_bytes)
    rows = parse_rows(split_lines(_guarded(run, meter.wrap(chunks))))
    report: pool.AddCodesReport | None = None
    try:
        columns = read_header(rows, CODE_COLUMNS, ("code",))
        valid = _code_rows(run, rows, columns, today)
        first = next(valid, None)
        if first is not None:
            with session_scope(engine) as session:
                pool.add_batch(session, batch_no=run.batch_no, sku=line.sku,
                               issuance_mode=IssuanceMode.CODE_POOL.value,
                               unit_cost=line.unit_cost, currency=plan.order.currency,
                               status=BatchStatus.FROZEN, purchase_order=plan.order.po_no)
            report = pool.add_codes(
                engine, run.batch_no, chain([first], valid), keyring,
                actor=actor or f"vendor:{plan.vendor.slug}", system="vendor-portal",
                chunk_size=chunk_size, limit=plan.open_quantity, on_refused=run.pool_refusal)
    except _FileRefused as refused:
        _drain(rows)
        run.flush()
        return _finish(engine, run, meter, file_refused=refused)
    except Exception as exc:
        return _finish_after(engine, run, meter, exc)
    run.flush()
    return _finish(engine, run, meter, added=report.added if report else 0,
                   latest_rank=report.latest_rank if report else None)


def _finish_after(engine: Engine, run: _Run, meter: _Meter, exc: Exception) -> UploadResult:
    """An error midway (the database, say): finish the upload as interrupted with what was
    stored, if the database lets us; otherwise the error stands and recovery finishes it."""
    run.stop(f"the upload stopped on an error ({exc.__class__.__name__}); rows after the "
             "last one stored were not received")
    try:
        run.flush()
        return _finish(engine, run, meter)
    except Exception:
        raise exc from None


def _drain(rows: Iterator[Parsed]) -> None:
    for _ in rows:
        pass


def _finish(engine: Engine, run: _Run, meter: _Meter | None, *, added: int | None = None,
            latest_rank: int | None = None, file_refused: _FileRefused | None = None
            ) -> UploadResult:
    """Close the upload: the receipt (code files), its status and counts, a dead letter when
    rows or the file were refused. One transaction. ``added`` and ``latest_rank``: what the
    pool reported storing (the latest expiry rank of the codes added); not given, they are
    read from the database."""
    with session_scope(engine, immediate=True) as session:
        upload = session.get(VendorUpload, run.upload_id)
        assert upload is not None
        receipt_no = None
        if isinstance(run, _CodeRun):
            accepted = added if added is not None else _codes_in(session, run.batch_no)
            receipt_no = _receive(session, run, upload, accepted,
                                  latest_rank if added is not None else None)
        else:
            accepted = added if added is not None else _write_offs_in(session, run.upload_id)
        if file_refused is not None:
            status, message = UploadStatus.REJECTED, (
                f"{run.file_name}: {file_refused.detail} (rule {file_refused.rule.value})")
        elif run.stopped:
            status, message = UploadStatus.INTERRUPTED, f"{run.file_name}: {run.stopped}"
        elif accepted == 0:
            status, message = UploadStatus.REJECTED, (
                f"{run.file_name}: no row accepted" if run.rows_total else
                f"{run.file_name}: the file has no data rows")
        elif run.rejected:
            status, message = UploadStatus.PARTIAL, None
        else:
            status, message = UploadStatus.ACCEPTED, None
        if meter is not None:
            upload.size_bytes = meter.size
            upload.content_hash = meter.sha.hexdigest()
            same = session.scalar(select(VendorUpload.upload_no).where(
                VendorUpload.vendor_id == run.vendor_id, VendorUpload.id != run.upload_id,
                VendorUpload.kind == upload.kind,
                VendorUpload.content_hash == upload.content_hash).limit(1))
            if same:
                message = (message + "; " if message else "") + f"same content as upload {same}"
        upload.status = status
        upload.message = message[:2000] if message else None
        upload.rows_total = run.rows_total
        upload.rows_accepted = accepted
        upload.rows_rejected = run.rejected
        upload.finished_at = upload.updated_at = now_utc()
        if run.rejected or file_refused is not None or run.stopped:
            record_dead_letters(session, [DeadLetterItem(
                flow=DEAD_LETTER_FLOW, source=run.vendor_source, entity_type="upload",
                entity_key=run.upload_no,
                reason=message or f"{run.file_name}: {run.rejected} of {run.rows_total} rows "
                                  f"refused (first: {run.sample[0].message(run.file_name)})",
                payload={"upload_no": run.upload_no, "file_name": run.file_name,
                         "kind": upload.kind, "rows_total": run.rows_total,
                         "rows_rejected": run.rejected, "rejected": run.sample_rows()})])
    return UploadResult(
        upload_no=run.upload_no, status=status, kind=upload.kind, file_name=run.file_name,
        rows_total=run.rows_total, rows_accepted=accepted, rows_rejected=run.rejected,
        size_bytes=upload.size_bytes, content_hash=upload.content_hash, receipt_no=receipt_no,
        batch_no=upload.batch_no if accepted and isinstance(run, _CodeRun) else None,
        message=upload.message, rejected_sample=run.sample_rows())


def _write_offs_in(session: Session, upload_id: int) -> int:
    return int(session.scalar(select(func.count()).select_from(WriteOff)
                              .where(WriteOff.upload_id == upload_id)) or 0)


def _codes_in(session: Session, batch_no: str) -> int:
    return int(session.scalar(select(func.count()).select_from(PoolCode)
                              .where(PoolCode.batch_no == batch_no)) or 0)


def _receive(session: Session, run: _CodeRun, upload: VendorUpload, accepted: int,
             latest: int | None = None) -> str | None:
    """The accepted codes become the receipt; the batch opens for sale with the expiry its
    codes carry (a fixed date when every code has one: the latest). ``latest``: the latest
    expiry rank of the batch's codes when known (else it is looked for among the pool's codes,
    which no index orders by batch)."""
    batch = session.get(PoolBatch, run.batch_no)
    if batch is None:
        return None
    plan = run.plan
    if accepted == 0:
        batch.status = BatchStatus.CLOSED.value
        batch.updated_at = now_utc()
        return None
    if latest is None:
        latest = session.scalar(select(func.max(PoolCode.expiry_rank))
                                .where(PoolCode.batch_no == run.batch_no))
    fixed = latest is not None and latest < NO_EXPIRY_RANK
    pool.upsert_batch(session, batch_no=run.batch_no, sku=batch.sku,
                      issuance_mode=IssuanceMode.CODE_POOL.value, unit_cost=batch.unit_cost,
                      currency=batch.currency, status=BatchStatus.ACTIVE,
                      expiry_type=ExpiryType.FIXED_DATE if fixed else ExpiryType.NONE,
                      expires_on=pool.rank_to_date(latest) if fixed else None)
    receipt = record_receipt(session, plan, batch_no=run.batch_no, quantity=accepted,
                             upload_id=upload.id)
    return receipt.receipt_no


# recovery -------------------------------------------------------------------------------------
def _recover_line(session: Session, po_line_id: int) -> None:
    stale = session.scalar(select(VendorUpload).where(
        VendorUpload.po_line_id == po_line_id, VendorUpload.status == UploadStatus.RECEIVING,
        VendorUpload.updated_at < now_utc() - STALE_AFTER))
    if stale is not None:
        _finish_stale(session, stale)


def _finish_stale(session: Session, upload: VendorUpload) -> None:
    vendor = session.get(Vendor, upload.vendor_id)
    assert vendor is not None
    note = (f"{upload.file_name}: the upload stopped after row {upload.rows_total} (the "
            "process receiving it ended); rows after it were not received")
    accepted = 0
    if upload.kind == UploadKind.CODES and upload.po_line_id is not None:
        line = session.get(PurchaseOrderLine, upload.po_line_id)
        order = session.get(PurchaseOrder, line.po_id) if line else None
        contract = session.get(SupplierContract, order.contract_id) if order else None
        assert line is not None and order is not None and contract is not None
        plan = ReceivingPlan(vendor=vendor, order=order, line=line, contract=contract,
                             open_quantity=line.quantity - line.received_quantity,
                             code_format=None)
        run = _CodeRun(session.get_bind(), upload, plan)  # type: ignore[arg-type]
        accepted = _codes_in(session, run.batch_no)
        _receive(session, run, upload, accepted)
    elif upload.kind == UploadKind.WRITE_OFF:
        accepted = _write_offs_in(session, upload.id)  # type: ignore[arg-type]
    upload.status = UploadStatus.INTERRUPTED
    upload.rows_accepted = accepted
    upload.message = note
    upload.finished_at = upload.updated_at = now_utc()
    record_dead_letters(session, [DeadLetterItem(
        flow=DEAD_LETTER_FLOW, source=f"vendor:{vendor.slug}", entity_type="upload",
        entity_key=upload.upload_no, reason=note,
        payload={"upload_no": upload.upload_no, "file_name": upload.file_name,
                 "rows_accepted": accepted})])
    session.flush()


def recover_stale_uploads(engine: Engine, *, older_than: timedelta = STALE_AFTER) -> list[str]:
    """Finish uploads whose receiving process died (heartbeat older than ``older_than``) as
    ``interrupted``, with a receipt for the codes they had received. Returns their numbers."""
    with session_scope(engine, immediate=True) as session:
        stale = list(session.scalars(select(VendorUpload).where(
            VendorUpload.status == UploadStatus.RECEIVING,
            VendorUpload.updated_at < now_utc() - older_than)))
        for upload in stale:
            _finish_stale(session, upload)
        return [u.upload_no for u in stale]


# write-off files ------------------------------------------------------------------------------
class _WriteOffRun(_Run):
    pass


def _write_off_rows(run: _WriteOffRun, rows: Iterator[Parsed], columns: dict[str, int],
                    now: datetime) -> Iterator[tuple[int, str, datetime]]:
    width = len(columns)
    ic, ir = columns["code"], columns["redeemed_at"]
    latest = now + FUTURE_TOLERANCE
    refuse = run.refuse
    for row, record in rows:
        run.rows_total += 1
        code = record if isinstance(record, Problem) else _row_code(row, record, width, ic)
        if isinstance(code, Problem):
            refuse(code)
            continue
        text = record[ir].strip()
        try:
            redeemed = _parse_redeemed(text)
        except ValueError:
            refuse(Problem(row, Rule.REDEEMED_AT_INVALID, "redeemed_at", text[:64] or None,
                           f"{text[:64]!r} is not an RFC 3339 time with offset "
                           "(2026-11-20T08:15:00+08:00)"))
            continue
        if redeemed > latest:
            refuse(Problem(row, Rule.REDEEMED_AT_FUTURE, "redeemed_at", text[:64],
                           f"{text[:64]} is in the future"))
            continue
        yield row, code, redeemed


def receive_write_off_file(
    engine: Engine, keyring: Keyring, *, vendor_id: int, file_name: str,
    chunks: Iterable[bytes], max_bytes: int = MAX_UPLOAD_BYTES, now: datetime | None = None,
    chunk_size: int = pool.CODE_CHUNK,
) -> UploadResult:
    """Stream a vendor's write-off file (codes it reports redeemed) into ``write_off`` for
    settlement by write-off quantity. Each code once per vendor: a code repeating an earlier
    row, or written off in an earlier upload, is refused naming where it was first."""
    now = now or now_utc()
    with session_scope(engine) as session:
        vendor = session.get(Vendor, vendor_id)
        if vendor is None:
            raise NotFound(f"no vendor {vendor_id}")
        upload = _new_upload(session, vendor, UploadKind.WRITE_OFF, file_name, None)
    run = _WriteOffRun(engine, upload, vendor)
    meter = _Meter(max_bytes)
    rows = parse_rows(split_lines(_guarded(run, meter.wrap(chunks))))
    added = 0
    try:
        columns = read_header(rows, WRITE_OFF_COLUMNS, ("code", "redeemed_at"))
        batch: list[tuple[int, str, datetime]] = []
        for item in _write_off_rows(run, rows, columns, now):
            batch.append(item)
            if len(batch) >= chunk_size:
                added += _store_write_offs(engine, keyring, run, batch)
                batch = []
                run.tick()
        if batch:
            added += _store_write_offs(engine, keyring, run, batch)
    except _FileRefused as refused:
        _drain(rows)
        run.flush()
        return _finish(engine, run, meter, added=0, file_refused=refused)
    except Exception as exc:
        return _finish_after(engine, run, meter, exc)
    run.flush()
    return _finish(engine, run, meter, added=added)


def _store_write_offs(engine: Engine, keyring: Keyring, run: _WriteOffRun,
                      batch: list[tuple[int, str, datetime]]) -> int:
    hashes = keyring.hash_codes(code for _, code, _ in batch)
    first: dict[str, int] = {}
    rows = []
    for (row, code, redeemed), digest in zip(batch, hashes, strict=True):
        if digest in first:
            run.refuse(Problem(row, Rule.DUPLICATE_IN_FILE, "code", mask(code),
                               f"code {mask(code)} repeats row {first[digest]} of this file"))
            continue
        first[digest] = row
        rows.append({"vendor_id": run.vendor_id, "upload_id": run.upload_id, "row_no": row,
                     "code_hash": digest, "last4": last4(code), "redeemed_at": redeemed,
                     "status": "pending", "bill_id": None})
    if not rows:
        return 0
    table = WriteOff.__table__
    with session_scope(engine) as session:
        inserted: set[str] = set()
        for part in pool._chunks(rows, 1000):
            stmt = _insert(session, table).on_conflict_do_nothing(
                index_elements=["vendor_id", "code_hash"]).returning(table.c.code_hash)
            inserted.update(session.scalars(stmt, list(part)))
        lost = [r for r in rows if r["code_hash"] not in inserted]
        if lost:
            earlier = {h: (u, n) for h, u, n in session.execute(
                select(table.c.code_hash, VendorUpload.upload_no, table.c.row_no)
                .join(VendorUpload, VendorUpload.id == table.c.upload_id)
                .where(table.c.vendor_id == run.vendor_id,
                       table.c.code_hash.in_([r["code_hash"] for r in lost])))}
            for r in lost:
                upload_no, row_no = earlier.get(r["code_hash"], ("?", 0))
                masked = "*" * 4 + r["last4"] if r["last4"] else "****"
                if upload_no == run.upload_no:
                    run.refuse(Problem(r["row_no"], Rule.DUPLICATE_IN_FILE, "code", masked,
                                       f"code {masked} repeats row {row_no} of this file"))
                else:
                    run.refuse(Problem(r["row_no"], Rule.ALREADY_WRITTEN_OFF, "code", masked,
                                       f"code {masked} was written off before (upload "
                                       f"{upload_no}, row {row_no})"))
    return len(inserted)


# reading results ------------------------------------------------------------------------------
def upload_rows(session: Session, upload_id: int, *, after: int = 0, limit: int = 1000
                ) -> list[UploadRow]:
    """Refused rows of an upload, by row number (rows not listed were accepted)."""
    return list(session.scalars(select(UploadRow).where(
        UploadRow.upload_id == upload_id, UploadRow.row_no > after)
        .order_by(UploadRow.row_no).limit(limit)))


def upload_view(upload: VendorUpload, po: tuple[str, int] | None = None) -> dict[str, Any]:
    return {
        "upload_no": upload.upload_no, "kind": upload.kind, "file_name": upload.file_name,
        "status": upload.status, "rows_total": upload.rows_total,
        "rows_accepted": upload.rows_accepted, "rows_rejected": upload.rows_rejected,
        "size_bytes": upload.size_bytes, "content_hash": upload.content_hash,
        "po_no": po[0] if po else None, "line_no": po[1] if po else None,
        "batch_no": upload.batch_no if upload.rows_accepted else None,
        "message": upload.message, "created_at": upload.created_at.isoformat(),
        "finished_at": upload.finished_at.isoformat() if upload.finished_at else None,
    }


Chunks = Callable[[], Iterable[bytes]]
