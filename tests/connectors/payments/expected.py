"""The expected values shipped beside the shared bank statements, read without running them.

The camt ``.json`` files are the genkgo/camt project's dumps of its own parse (money in minor
units, signed; objects seen before replaced by ``__RECURSIVITY__``). The MT940 ``.yml`` files
are PyYAML dumps of the ``mt-940`` library's objects with ``!!python/...`` tags; they are read
here with a safe loader that turns those objects into plain dicts and builds only the few
value types they use (Decimal, dates, offsets), so reading test data never runs code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

BANK = Path(__file__).resolve().parents[3].parent / "shared" / "testdata" / "bank-statements"
CAMT = BANK / "camt"
MT940 = BANK / "mt940"


# camt ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CamtExpectation:
    amount_minor: int
    currency: str
    credit_debit: str
    booking: str | None
    value: str | None
    account_servicer_reference: str | None
    batch_id: str | None
    status: str | None
    end_to_end_ids: tuple[str | None, ...]


def camt_expectations(path: Path) -> tuple[list[CamtExpectation], list[str]]:
    """(entries, account identifications) that the JSON states outright."""
    data = json.loads(path.read_text())
    entries = []
    accounts = []
    for entry in data.get("getEntries") or []:
        if not isinstance(entry, dict):
            continue
        details = []
        for detail in entry.get("getTransactionDetails") or []:
            if detail == "__RECURSIVITY__":
                detail = entry.get("getTransactionDetail")
            reference = (detail or {}).get("getReference") or {}
            details.append(reference.get("getEndToEndId"))
        money = entry["getAmount"]
        entries.append(CamtExpectation(
            amount_minor=int(money["getAmount"]),
            currency=money["getCurrency"]["getCode"],
            credit_debit=entry["getCreditDebitIndicator"],
            booking=(entry.get("getBookingDate") or {}).get("0"),
            value=(entry.get("getValueDate") or {}).get("0"),
            account_servicer_reference=entry.get("getAccountServicerReference"),
            batch_id=entry.get("getBatchPaymentId"),
            status=entry.get("getStatus"),
            end_to_end_ids=tuple(details),
        ))
        record = entry.get("getRecord")
        if isinstance(record, dict) and isinstance(record.get("getAccount"), dict):
            accounts.append(record["getAccount"]["getIdentification"])
    for record in data.get("getRecords") or []:
        if isinstance(record, dict) and isinstance(record.get("getAccount"), dict):
            accounts.append(record["getAccount"]["getIdentification"])
    return entries, accounts


# mt940 --------------------------------------------------------------------------------------
class GoldenLoader(yaml.SafeLoader):
    """SafeLoader plus the handful of python tags the goldens carry, built as plain data."""


def _object(loader: GoldenLoader, suffix: str, node: yaml.Node) -> Any:
    data: dict[str, Any] = {"__class__": suffix}
    yield data
    if isinstance(node, yaml.MappingNode):
        data.update(loader.construct_mapping(node, deep=True))


def _date_from(raw: bytes) -> date:
    return date(raw[0] * 256 + raw[1], raw[2], raw[3])


def _apply(loader: GoldenLoader, suffix: str, node: yaml.Node) -> Any:
    args = loader.construct_sequence(node, deep=True) if isinstance(node, yaml.SequenceNode) \
        else []
    if suffix == "decimal.Decimal":
        return Decimal(args[0])
    if suffix == "mt940.models.Date":
        return _date_from(args[0])
    if suffix == "mt940.models.DateTime":
        raw = args[0]
        zone = args[1] if len(args) > 1 and isinstance(args[1], timezone) else UTC
        return datetime(raw[0] * 256 + raw[1], raw[2], raw[3], raw[4], raw[5], raw[6],
                        int.from_bytes(raw[7:10], "big"), tzinfo=zone)
    if suffix == "mt940.models.FixedOffset":
        state = loader.construct_mapping(node.value[0][1], deep=True) \
            if isinstance(node, yaml.MappingNode) else {}
        offset = state.get("_offset", timedelta(0))
        return timezone(offset if isinstance(offset, timedelta) else timedelta(0))
    if suffix == "datetime.timedelta":
        return timedelta(*args)
    if suffix == "re._compile":
        return None
    raise yaml.constructor.ConstructorError(None, None, f"refusing python tag {suffix}",
                                            node.start_mark)


GoldenLoader.add_multi_constructor("tag:yaml.org,2002:python/object:", _object)
GoldenLoader.add_multi_constructor("tag:yaml.org,2002:python/object/apply:", _apply)
GoldenLoader.add_constructor("tag:yaml.org,2002:binary", yaml.SafeLoader.construct_yaml_binary)


@dataclass(frozen=True)
class Mt940Expectation:
    amount: Decimal
    currency: str | None
    status: str
    value_date: date
    entry_date: date | None
    customer_reference: str | None
    bank_reference: str | None


def mt940_expectations(path: Path) -> tuple[list[Mt940Expectation], dict[str, Any]]:
    """(transactions, statement data) from a golden ``.yml``."""
    golden = yaml.load(path.read_text(encoding="utf-8"), Loader=GoldenLoader)
    found = []
    for transaction in golden.get("transactions") or []:
        data = transaction["data"]
        amount = data["amount"]
        found.append(Mt940Expectation(
            amount=abs(amount["amount"]), currency=amount.get("currency"),
            status=data["status"], value_date=data["date"],
            entry_date=data.get("guessed_entry_date") or data.get("entry_date"),
            customer_reference=data.get("customer_reference"),
            bank_reference=data.get("bank_reference"),
        ))
    return found, golden.get("data") or {}
