"""Small payment files written by the tests (the formats of docs/payment-formats.md and
DESIGN.md section 5)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from connectors.payments.acquirer import COLUMNS as ACQUIRER_COLUMNS

ACQUIRER_ROWS: list[dict[str, str]] = [
    {"Company Account": "VouchCo", "Merchant Account": "VouchCoSG", "Psp Reference": "PSP0001",
     "Merchant Reference": "sg1-O1001", "Payment Method": "visa",
     "Creation Date": "2026-11-20 10:15:00", "TimeZone": "SGT", "Type": "Settled",
     "Modification Reference": "", "Gross Currency": "SGD", "Gross Debit (GC)": "",
     "Gross Credit (GC)": "100.00", "Exchange Rate": "1", "Net Currency": "SGD",
     "Net Debit (NC)": "", "Net Credit (NC)": "97.10", "Commission (NC)": "2.00",
     "Markup (NC)": "0.50", "Scheme Fees (NC)": "0.30", "Interchange (NC)": "0.10",
     "Payment Method Variant": "visacredit", "Batch Number": "42"},
    {"Company Account": "VouchCo", "Merchant Account": "VouchCoSG", "Psp Reference": "PSP0001",
     "Merchant Reference": "sg1-O1001", "Payment Method": "visa",
     "Creation Date": "2026-11-20 12:00:00", "TimeZone": "SGT", "Type": "Refunded",
     "Modification Reference": "MOD0002", "Gross Currency": "SGD", "Gross Debit (GC)": "40.00",
     "Gross Credit (GC)": "", "Exchange Rate": "1", "Net Currency": "SGD",
     "Net Debit (NC)": "40.20", "Net Credit (NC)": "", "Commission (NC)": "0.20",
     "Markup (NC)": "", "Scheme Fees (NC)": "", "Interchange (NC)": "",
     "Payment Method Variant": "visacredit", "Batch Number": "42"},
    {"Company Account": "VouchCo", "Merchant Account": "VouchCoSG", "Psp Reference": "",
     "Merchant Reference": "", "Payment Method": "", "Creation Date": "2026-11-21 02:00:00",
     "TimeZone": "SGT", "Type": "MerchantPayout", "Modification Reference": "TX-PAYOUT-42",
     "Gross Currency": "", "Gross Debit (GC)": "", "Gross Credit (GC)": "",
     "Exchange Rate": "", "Net Currency": "SGD", "Net Debit (NC)": "56.90",
     "Net Credit (NC)": "", "Commission (NC)": "", "Markup (NC)": "", "Scheme Fees (NC)": "",
     "Interchange (NC)": "", "Payment Method Variant": "", "Batch Number": "42"},
]


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict[str, str]]) -> Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n",
                            extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    path.write_text(buffer.getvalue(), encoding="utf-8")
    return path


def acquirer_file(path: Path, rows: Sequence[dict[str, str]] | None = None,
                  columns: Sequence[str] = ACQUIRER_COLUMNS) -> Path:
    return write_csv(path, columns, ACQUIRER_ROWS if rows is None else rows)


PAYPAL_COLUMNS = (
    "Transaction ID", "Invoice ID", "PayPal Reference ID", "Transaction Event Code",
    "Transaction Initiation Date", "Transaction Completion Date",
    "Transaction Debit or Credit", "Gross Transaction Amount", "Gross Transaction Currency",
    "Fee Debit or Credit", "Fee Amount", "Fee Currency", "Custom Field", "Consumer ID",
)  # fmt: skip
PAYPAL_ROWS = [
    {"Transaction ID": "5TY05013RG002845M", "Invoice ID": "tw1-O77",
     "PayPal Reference ID": "", "Transaction Event Code": "T0006",
     "Transaction Initiation Date": "2026/11/20 09:00:00 +0800",
     "Transaction Completion Date": "2026/11/20 09:00:05 +0800",
     "Transaction Debit or Credit": "CR", "Gross Transaction Amount": "1500",
     "Gross Transaction Currency": "TWD", "Fee Debit or Credit": "DR", "Fee Amount": "60",
     "Fee Currency": "TWD", "Custom Field": "", "Consumer ID": "BUYER1"},
    {"Transaction ID": "8HB01234XY5678901", "Invoice ID": "sg1-O78",
     "PayPal Reference ID": "2AB00000CD1111111", "Transaction Event Code": "T1107",
     "Transaction Initiation Date": "2026/11/20 11:00:00 +0800",
     "Transaction Completion Date": "", "Transaction Debit or Credit": "DR",
     "Gross Transaction Amount": "1250", "Gross Transaction Currency": "SGD",
     "Fee Debit or Credit": "CR", "Fee Amount": "30", "Fee Currency": "SGD",
     "Custom Field": "", "Consumer ID": ""},
]

COD_COLUMNS = ("remittance_id", "courier", "shipment_id", "tracking_number", "site",
               "order_id", "status", "delivered_at", "currency", "cod_amount", "cod_fee",
               "remitted_amount", "remitted_on")
COD_ROWS = [
    {"remittance_id": "R-2026-11-21", "courier": "ninjavan", "shipment_id": "SHP1",
     "tracking_number": "NV123", "site": "ph1", "order_id": "O500", "status": "delivered",
     "delivered_at": "2026-11-20T15:30:00+08:00", "currency": "PHP", "cod_amount": "1200.00",
     "cod_fee": "24.00", "remitted_amount": "1176.00", "remitted_on": "2026-11-21"},
    {"remittance_id": "R-2026-11-21", "courier": "ninjavan", "shipment_id": "SHP2",
     "tracking_number": "NV124", "site": "ph1", "order_id": "O501", "status": "returned",
     "delivered_at": "2026-11-20T16:00:00+08:00", "currency": "PHP", "cod_amount": "0.00",
     "cod_fee": "10.00", "remitted_amount": "-10.00", "remitted_on": "2026-11-21"},
]

WALLET_COLUMNS = ("site", "transaction_id", "type", "order_id", "created_at", "currency",
                  "amount", "settlement_id", "customer_ref")
WALLET_ROWS = [
    {"site": "vn1", "transaction_id": "W1", "type": "payment", "order_id": "O9",
     "created_at": "2026-11-20T08:00:00+07:00", "currency": "VND", "amount": "250000",
     "settlement_id": "S1", "customer_ref": "C7"},
    {"site": "vn1", "transaction_id": "W2", "type": "payout", "order_id": "",
     "created_at": "2026-11-21T08:00:00+07:00", "currency": "VND", "amount": "250000",
     "settlement_id": "S1", "customer_ref": ""},
]

SPLIT_COLUMNS = ("split_id", "payment_id", "order_id", "site", "type", "receiver_id",
                 "receiver_type", "currency", "amount", "order_amount", "created_at")


def split_row(split_id: str, kind: str, receiver: str, amount: str, *,
              receiver_type: str = "user", when: str = "2026-11-20T10:00:00+08:00",
              payment: str = "P1", order_amount: str = "100.00") -> dict[str, str]:
    return {"split_id": split_id, "payment_id": payment, "order_id": "O1", "site": "my1",
            "type": kind, "receiver_id": receiver, "receiver_type": receiver_type,
            "currency": "MYR", "amount": amount, "order_amount": order_amount,
            "created_at": when}
