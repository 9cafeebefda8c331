"""Reading payment files into canonical records, and the daily intake of files through the
file ledger.

``read_payment_file`` is the one place that knows which reader and which mapping go with
each format; ``ingest_payment_files`` reads a day's files one by one, so a file that cannot be
read is rejected on its own (with a dead letter saying why) and the others go on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, tzinfo
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from canonical import Delivery, Fee, PaymentTrace, Payout
from connectors.payments.acquirer import read_acquirer
from connectors.payments.camt import CamtReader
from connectors.payments.cod import read_cod
from connectors.payments.common import PaymentFileError, file_label
from connectors.payments.detect import detect_format, normalise_format
from connectors.payments.mt94x import Mt940Reader
from connectors.payments.paypal import read_paypal
from connectors.payments.split import read_split
from connectors.payments.stripe import BalanceTransaction, read_stripe_file
from connectors.payments.wallet_balance import read_wallet_balance
from mappings.errors import MappingError
from mappings.payments import (
    PaymentRecord,
    acquirer_row_records,
    camt_entry_records,
    cod_row_records,
    mt940_line_records,
    paypal_row_records,
    split_row_records,
    stripe_payout_record,
    stripe_transaction_records,
    wallet_balance_records,
)
from state.db import session_scope
from state.payment_files import FileStatus, content_digest, file_status, record_file
from state.store import DeadLetterItem, record_dead_letters, resolve_dead_letters

FLOW = "ingest_payments"
SOURCE = "payments"
Records = Iterator[PaymentRecord]


def _camt(expect: str) -> Callable[[Path, str | None, tzinfo], Records]:
    def read(path: Path, account: str | None, tz: tzinfo) -> Records:
        for entry in CamtReader(path, expect=expect, default_tz=tz).entries():
            yield from camt_entry_records(entry)
    return read


def _mt(expect: str) -> Callable[[Path, str | None, tzinfo], Records]:
    def read(path: Path, account: str | None, tz: tzinfo) -> Records:
        for line in Mt940Reader(path, expect=expect).lines():
            yield from mt940_line_records(line)
    return read


def _acquirer(path: Path, account: str | None, tz: tzinfo) -> Records:
    for row in read_acquirer(path):
        yield from acquirer_row_records(row)


def _stripe(path: Path, account: str | None, tz: tzinfo) -> Records:
    for record in read_stripe_file(path):
        if isinstance(record, BalanceTransaction):
            yield from stripe_transaction_records(record, account=account or "stripe")
        else:
            yield stripe_payout_record(record, account=account or "stripe")


def _paypal(path: Path, account: str | None, tz: tzinfo) -> Records:
    for row in read_paypal(path, default_tz=tz):
        yield from paypal_row_records(row, account=account)


def _cod(path: Path, account: str | None, tz: tzinfo) -> Records:
    for row in read_cod(path, default_tz=tz):
        yield from cod_row_records(row)


def _wallet(path: Path, account: str | None, tz: tzinfo) -> Records:
    for row in read_wallet_balance(path, default_tz=tz):
        yield from wallet_balance_records(row)


def _split(path: Path, account: str | None, tz: tzinfo) -> Records:
    for row in read_split(path, default_tz=tz):
        yield from split_row_records(row)


READERS: dict[str, Callable[[Path, str | None, tzinfo], Records]] = {
    "camt053": _camt("camt.053"), "camt052": _camt("camt.052"), "camt054": _camt("camt.054"),
    "mt940": _mt("MT940"), "mt942": _mt("MT942"), "acquirer": _acquirer, "stripe": _stripe,
    "paypal": _paypal, "cod": _cod, "wallet": _wallet, "split": _split,
}


def resolve_format(path: str | Path, fmt: str = "auto") -> str:
    name = normalise_format(fmt)
    return detect_format(path) if name == "auto" else name


def read_payment_file(
    path: str | Path, fmt: str = "auto", *, account: str | None = None,
    default_tz: tzinfo = UTC,
) -> Records:
    """The canonical records a payment file holds, streamed. Raises ``PaymentFileError``
    (the file or a record in it cannot be read) or ``MappingError`` (a record read but
    cannot become canonical), each naming the file, the line and the field."""
    name = resolve_format(path, fmt)
    return READERS[name](Path(path), account, default_tz)


# the daily intake ---------------------------------------------------------------------------
@dataclass
class FileOutcome:
    path: Path
    name: str
    status: str
    """``read``, ``seen`` (skipped), ``changed`` (flagged, not read) or ``rejected``."""
    format: str | None = None
    digest: str | None = None
    error: str | None = None
    records: list[PaymentRecord] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        counts = {"traces": 0, "payouts": 0, "fees": 0, "deliveries": 0}
        for record in self.records:
            kind = {PaymentTrace: "traces", Payout: "payouts", Fee: "fees",
                    Delivery: "deliveries"}[type(record)]
            counts[kind] += 1
        return counts

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"file": self.name, "status": self.status, "format": self.format}
        if self.error:
            out["error"] = self.error
        if self.status == "read":
            out.update(self.counts())
        return out


def ingest_payment_files(
    paths: Iterable[str | Path], engine: Engine, *, fmt: str = "auto",
    accept_changed: bool = False, account: str | None = None, default_tz: tzinfo = UTC,
) -> list[FileOutcome]:
    """Read each file not read before. A file is read whole or not at all: one bad record
    rejects its file (a remittance cannot be built on part of a settlement report), and the
    file's name is not recorded, so a corrected file is read when it comes. A changed file
    under a known name is flagged as a dead letter unless ``accept_changed``; reading a
    file closes the dead letters its name had."""
    outcomes = []
    for raw in paths:
        path = Path(raw)
        name = file_label(path)
        outcome = FileOutcome(path=path, name=name, status="rejected")
        outcomes.append(outcome)
        try:
            outcome.digest = content_digest(path)
        except OSError as exc:
            outcome.error = f"{name}: cannot read the file ({exc.strerror}) [unreadable]"
            continue
        with session_scope(engine) as session:
            status = file_status(session, name, outcome.digest)
        if status is FileStatus.SEEN:
            outcome.status = "seen"
            continue
        if status is FileStatus.CHANGED and not accept_changed:
            outcome.status = "changed"
            outcome.error = (f"{name}: read before with other content; not merged (accept it "
                             "with --accept-changed once the provider confirms the "
                             "correction) [changed_file]")
            _dead_letter(engine, outcome, {"digest": outcome.digest})
            continue
        try:
            outcome.format = resolve_format(path, fmt)
            outcome.records = list(read_payment_file(path, outcome.format, account=account,
                                                     default_tz=default_tz))
        except (PaymentFileError, MappingError, ValueError) as exc:
            outcome.records = []
            outcome.error = str(exc)
            _dead_letter(engine, outcome, {"digest": outcome.digest,
                                           "rule": getattr(exc, "rule", None)})
            continue
        with session_scope(engine) as session:
            record_file(session, name, outcome.digest)
            resolve_dead_letters(session, FLOW, SOURCE, "payment_file", [name])
        outcome.status = "read"
    return outcomes


def _dead_letter(engine: Engine, outcome: FileOutcome, payload: dict[str, Any]) -> None:
    with session_scope(engine) as session:
        record_dead_letters(session, [DeadLetterItem(
            flow=FLOW, source=SOURCE, entity_type="payment_file", entity_key=outcome.name[:255],
            reason=outcome.error or "", payload={"format": outcome.format, **payload},
        )])
