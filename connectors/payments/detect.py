"""Which payment format a file is, from its first bytes (``--format auto``)."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from connectors.payments.common import PaymentFileError, file_label

FORMATS = ("camt053", "camt052", "camt054", "mt940", "mt942", "acquirer", "stripe", "paypal",
           "cod", "wallet", "split")
ALIASES = {"adyen": "acquirer", "card": "acquirer", "card_acquirer": "acquirer",
           "wallet_balance": "wallet", "courier": "cod"}

_CAMT = re.compile(rb"urn:iso:std:iso:20022:tech:xsd:camt\.(05[234])\.")
_MT942 = re.compile(rb"^(:13D?:|:34F:|:90[CD]:)|\{2:[IO]942", re.MULTILINE)
_MT940 = re.compile(rb"^:(20|25|60F|61):", re.MULTILINE)
HEAD = 65_536

CSV_SIGNATURES: tuple[tuple[str, frozenset[str]], ...] = (
    ("acquirer", frozenset({"psp reference", "merchant account", "batch number"})),
    ("paypal", frozenset({"transaction id", "transaction event code",
                          "gross transaction amount"})),
    ("cod", frozenset({"remittance_id", "courier", "cod_amount"})),
    ("split", frozenset({"split_id", "payment_id", "receiver_id"})),
    ("wallet", frozenset({"transaction_id", "settlement_id", "site", "type"})),
)


def normalise_format(name: str) -> str:
    key = name.strip().lower().replace("-", "_").replace(".", "")
    key = ALIASES.get(key, key)
    if key != "auto" and key not in FORMATS:
        raise ValueError(f"unknown format {name!r}; known: auto, {', '.join(FORMATS)}")
    return key


def detect_format(path: str | Path) -> str:
    file = file_label(path)
    try:
        with Path(path).open("rb") as fh:
            head = fh.read(HEAD)
    except OSError as exc:
        raise PaymentFileError(file, "unreadable", f"cannot read the file ({exc.strerror})"
                               ) from None
    body = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not body:
        raise PaymentFileError(file, "empty_file", "the file is empty")
    if body.startswith(b"<"):
        found = _CAMT.search(head)
        if found:
            return f"camt{found.group(1).decode()}"
        raise PaymentFileError(file, "format_unknown", "XML, but not a camt.052/053/054 "
                               "document")
    if body.startswith((b"{", b"[")):
        return "stripe"
    if _MT940.search(head):
        return "mt942" if _MT942.search(head) else "mt940"
    first = body.split(b"\n", 1)[0].decode("utf-8", errors="replace")
    delimiter = max(",;\t|", key=first.count)
    header = {" ".join(h.split()).casefold()
              for h in next(csv.reader(io.StringIO(first), delimiter=delimiter))}
    for name, signature in CSV_SIGNATURES:
        if signature <= header:
            return name
    raise PaymentFileError(file, "format_unknown", "not a payment format this reader knows; "
                           "name it with --format", line=1)
