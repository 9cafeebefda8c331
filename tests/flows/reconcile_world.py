"""A generated business day with known ground truth, written as the files vouchflow reads:
orders and deliveries as canonical JSON lines, card acquirer settlement CSVs (three merchant
accounts, one in USD), a PayPal-style CSV, a COD remittance, wallet balance payments and a
split settlement, plus five malformed files that must be refused without stopping the day.

Every anomaly sits on its own order, so the expected classes are exact sets."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

from tests.connectors.payments.expected import CAMT
from tests.connectors.payments.samples import (
    ACQUIRER_COLUMNS,
    COD_COLUMNS,
    PAYPAL_COLUMNS,
    SPLIT_COLUMNS,
    WALLET_COLUMNS,
    write_csv,
)

DAY = date(2026, 11, 20)
ZONES = {"sg1": "Asia/Singapore", "my1": "Asia/Kuala_Lumpur"}
CURRENCY = {"sg1": "SGD", "my1": "MYR"}


@dataclass
class World:
    payment_files: list[Path]
    order_files: list[Path]
    delivery_files: list[Path]
    malformed: list[Path]
    truth: dict[str, set[str]]
    """Discrepancy class -> ``site:order`` (order classes), provider reference
    (payment without order) or payout id."""
    groups: dict[str, set[str]]
    orders: dict[str, Decimal] = field(default_factory=dict)


def _at(site: str, day: date, hour: int = 10) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=ZoneInfo(ZONES[site]))


class _Builder:
    def __init__(self) -> None:
        self.orders: list[dict[str, object]] = []
        self.deliveries: list[dict[str, object]] = []
        self.totals: dict[str, Decimal] = {}

    def order(self, site: str, order_id: str, total: str, method: str, provider: str,
              reference: str, *, day: date = DAY, delivered: bool = True,
              status: str = "confirmed") -> None:
        created = _at(site, day)
        money = {"amount": total, "currency": CURRENCY[site]}
        self.orders.append({
            "site": site, "order_id": order_id, "status": status,
            "created_at": created.isoformat(), "updated_at": created.isoformat(),
            "currency": CURRENCY[site],
            "lines": [{"line_id": "1", "sku": "GIFT-10", "quantity": 1, "unit_price": money}],
            "payment": {"method": method, "provider": provider,
                        "provider_reference": reference, "amount": money}})
        self.totals[f"{site}:{order_id}"] = Decimal(total)
        if delivered:
            self.deliveries.append({
                "delivery_id": f"dlv-{site}-{order_id}", "site": site, "order_id": order_id,
                "line_id": "1", "kind": "codes", "status": "delivered", "quantity": 1,
                "delivered_at": (created + timedelta(minutes=2)).isoformat(),
                "source": f"wallet:{site}"})


def _settled(account: str, psp: str, order: str, gross: str, fee: str, *, currency: str,
             batch: str, when: str, kind: str = "Settled", modification: str = "",
             zone: str = "SGT") -> dict[str, str]:
    net = str(Decimal(gross) - Decimal(fee))
    credit = kind in {"Settled", "ChargebackReversed"}
    return {"Company Account": "VouchCo", "Merchant Account": account, "Psp Reference": psp,
            "Merchant Reference": order, "Payment Method": "visa", "Creation Date": when,
            "TimeZone": zone, "Type": kind, "Modification Reference": modification,
            "Gross Currency": currency, "Gross Debit (GC)": "" if credit else gross,
            "Gross Credit (GC)": gross if credit else "", "Exchange Rate": "1",
            "Net Currency": currency, "Net Debit (NC)": "" if credit else net,
            "Net Credit (NC)": net if credit else "", "Commission (NC)": fee,
            "Markup (NC)": "", "Scheme Fees (NC)": "", "Interchange (NC)": "",
            "Payment Method Variant": "visacredit", "Batch Number": batch}


def _payout(account: str, batch: str, amount: Decimal, currency: str, when: str
            ) -> dict[str, str]:
    return {"Company Account": "VouchCo", "Merchant Account": account, "Psp Reference": "",
            "Merchant Reference": "", "Payment Method": "", "Creation Date": when,
            "TimeZone": "SGT", "Type": "MerchantPayout", "Modification Reference": f"PO-{batch}",
            "Gross Currency": "", "Gross Debit (GC)": "", "Gross Credit (GC)": "",
            "Exchange Rate": "", "Net Currency": currency, "Net Debit (NC)": str(amount),
            "Net Credit (NC)": "", "Commission (NC)": "", "Markup (NC)": "",
            "Scheme Fees (NC)": "", "Interchange (NC)": "", "Payment Method Variant": "",
            "Batch Number": batch}


def _net(rows: list[dict[str, str]]) -> Decimal:
    total = Decimal(0)
    for r in rows:
        if r["Net Credit (NC)"]:
            total += Decimal(r["Net Credit (NC)"])
        if r["Net Debit (NC)"]:
            total -= Decimal(r["Net Debit (NC)"])
    return total


def build_world(folder: Path, *, malformed: bool = True) -> World:
    folder.mkdir(parents=True, exist_ok=True)
    b = _Builder()
    when = "2026-11-20 11:00:00"
    # card, sg1 (merchant account VouchCoSG, batch 77, whose payout is 1.00 short) ------------
    sg: list[dict[str, str]] = []
    for i in range(1, 7):
        b.order("sg1", f"C{i}", "100.00", "card", "acquirer", f"PSP-C{i}")
        sg.append(_settled("VouchCoSG", f"PSP-C{i}", f"C{i}", "100.00", "2.00",
                           currency="SGD", batch="77", when=when))
    b.order("sg1", "CREF", "50.00", "card", "acquirer", "PSP-CREF",
            status="partially_refunded")
    sg.append(_settled("VouchCoSG", "PSP-CREF", "CREF", "50.00", "1.00", currency="SGD",
                       batch="77", when=when))
    sg.append(_settled("VouchCoSG", "PSP-CREF", "CREF", "20.00", "0.00", currency="SGD",
                       batch="77", when="2026-11-20 15:00:00", kind="Refunded",
                       modification="MOD-CREF"))
    b.order("sg1", "CCB", "80.00", "card", "acquirer", "PSP-CCB")
    sg.append(_settled("VouchCoSG", "PSP-CCB", "CCB", "80.00", "1.60", currency="SGD",
                       batch="77", when=when))
    sg.append(_settled("VouchCoSG", "PSP-CCB", "CCB", "80.00", "0.00", currency="SGD",
                       batch="77", when="2026-11-20 18:00:00", kind="Chargeback",
                       modification="CB-CCB"))
    b.order("sg1", "CMIS", "120.00", "card", "acquirer", "PSP-CMIS")
    sg.append(_settled("VouchCoSG", "PSP-CMIS", "CMIS", "119.00", "2.38", currency="SGD",
                       batch="77", when=when))
    b.order("sg1", "CPND", "60.00", "card", "acquirer", "PSP-CPND", delivered=False)
    sg.append(_settled("VouchCoSG", "PSP-CPND", "CPND", "60.00", "1.20", currency="SGD",
                       batch="77", when=when))
    # yesterday's order, settled today: matched to its (context) order, never an orphan
    b.order("sg1", "CPREV", "40.00", "card", "acquirer", "PSP-CPREV", day=DAY - timedelta(1))
    sg.append(_settled("VouchCoSG", "PSP-CPREV", "CPREV", "40.00", "0.80", currency="SGD",
                       batch="77", when="2026-11-20 09:00:00"))
    b.order("sg1", "U1", "70.00", "card", "acquirer", "PSP-U1", delivered=False)
    sg.append(_payout("VouchCoSG", "77", _net(sg) - Decimal("1.00"), "SGD",
                      "2026-11-20 23:00:00"))
    # card, my1 (batch 78, exact payout), and one order delivered but never paid -------------
    my: list[dict[str, str]] = []
    for i in range(1, 4):
        b.order("my1", f"M{i}", "200.00", "card", "acquirer", f"PSP-M{i}")
        my.append(_settled("VouchCoMY", f"PSP-M{i}", f"M{i}", "200.00", "4.00",
                           currency="MYR", batch="78", when=when, zone="MYT"))
    b.order("my1", "U2", "90.00", "card", "acquirer", "PSP-U2")
    my.append(_payout("VouchCoMY", "78", _net(my), "MYR", "2026-11-20 23:00:00"))
    # card in USD for an SGD order: converted at USD/SGD 1.35 ----------------------------------
    b.order("sg1", "CUSD", "135.00", "card", "acquirer", "PSP-CUSD")
    us = [_settled("VouchCoUS", "PSP-CUSD", "CUSD", "100.00", "3.00", currency="USD",
                   batch="90", when=when)]
    card_sg = write_csv(folder / "acquirer_VouchCoSG_2026-11-20.csv", ACQUIRER_COLUMNS, sg)
    card_my = write_csv(folder / "acquirer_VouchCoMY_2026-11-20.csv", ACQUIRER_COLUMNS, my)
    card_us = write_csv(folder / "acquirer_VouchCoUS_2026-11-20.csv", ACQUIRER_COLUMNS, us)

    # PayPal, sg1: two normal, one paid twice, one payment naming no order ---------------------
    def pp(txn: str, invoice: str, minor: int, fee: int) -> dict[str, str]:
        return {"Transaction ID": txn, "Invoice ID": invoice, "PayPal Reference ID": "",
                "Transaction Event Code": "T0006",
                "Transaction Initiation Date": "2026/11/20 12:00:00 +0800",
                "Transaction Completion Date": "2026/11/20 12:00:05 +0800",
                "Transaction Debit or Credit": "CR", "Gross Transaction Amount": str(minor),
                "Gross Transaction Currency": "SGD", "Fee Debit or Credit": "DR",
                "Fee Amount": str(fee), "Fee Currency": "SGD", "Custom Field": "",
                "Consumer ID": "BUYER", "Account ID": "PPSG"}

    paypal_rows = []
    for name in ("P1", "P2"):
        b.order("sg1", name, "50.00", "paypal", "paypal", f"PP-{name}")
        paypal_rows.append(pp(f"PP-{name}", name, 5000, 150))
    b.order("sg1", "PDUP", "30.00", "paypal", "paypal", "PP-PDUP")
    paypal_rows.append(pp("PP-PDUP", "PDUP", 3000, 90))
    paypal_rows.append(pp("PP-PDUP-2", "PDUP", 3000, 90))
    paypal_rows.append(pp("PP-ORPH", "NO-SUCH-ORDER", 4500, 130))
    paypal = write_csv(folder / "paypal_PPSG_2026-11-20.csv", PAYPAL_COLUMNS, paypal_rows)

    # cash on delivery, my1: settled two days later (inside the 10-day lag) -------------------
    cod_rows = []
    for i, name in enumerate(("D1", "D2"), start=1):
        b.order("my1", name, "75.00", "cod", "ninjavan", f"SHP-{name}", delivered=False)
        cod_rows.append({
            "remittance_id": "R-1122", "courier": "ninjavan", "shipment_id": f"SHP-{name}",
            "tracking_number": f"NV{i}", "site": "my1", "order_id": name,
            "status": "delivered", "delivered_at": "2026-11-20T16:00:00+08:00",
            "currency": "MYR", "cod_amount": "75.00", "cod_fee": "1.50",
            "remitted_amount": "73.50", "remitted_on": "2026-11-22"})
    cod = write_csv(folder / "cod_ninjavan_2026-11-22.csv", COD_COLUMNS, cod_rows)

    # wallet balance, sg1: one whole payment, one order paid in two parts, the payout ----------
    b.order("sg1", "W1", "25.00", "wallet_balance", "wallet", "WB-W1")
    b.order("sg1", "WSPLIT", "100.00", "wallet_balance", "wallet", "WB-WSPLIT")
    wallet_rows = []
    for txn, order, amount in (("WB-W1", "W1", "25.00"), ("WB-WS-a", "WSPLIT", "30.00"),
                               ("WB-WS-b", "WSPLIT", "70.00")):
        wallet_rows.append({"site": "sg1", "transaction_id": txn, "type": "payment",
                            "order_id": order, "created_at": "2026-11-20T13:00:00+08:00",
                            "currency": "SGD", "amount": amount, "settlement_id": "S-77",
                            "customer_ref": ""})
    wallet_rows.append({"site": "sg1", "transaction_id": "WB-PAYOUT", "type": "payout",
                        "order_id": "", "created_at": "2026-11-20T22:00:00+08:00",
                        "currency": "SGD", "amount": "125.00", "settlement_id": "S-77",
                        "customer_ref": ""})
    wallet = write_csv(folder / "wallet_sg1_2026-11-20.csv", WALLET_COLUMNS, wallet_rows)

    # split settlement (profit sharing), my1 -----------------------------------------------------
    b.order("my1", "S1", "100.00", "split", "split", "SP-1")
    split_rows = [
        {"split_id": "SPL-1", "payment_id": "SP-1", "order_id": "S1", "site": "my1",
         "type": "payment", "receiver_id": "merchant", "receiver_type": "merchant",
         "currency": "MYR", "amount": "100.00", "order_amount": "100.00",
         "created_at": "2026-11-20T10:30:00+08:00"},
        {"split_id": "SPL-2", "payment_id": "SP-1", "order_id": "S1", "site": "my1",
         "type": "split", "receiver_id": "partner-7", "receiver_type": "user",
         "currency": "MYR", "amount": "20.00", "order_amount": "100.00",
         "created_at": "2026-11-20T11:00:00+08:00"},
    ]
    split = write_csv(folder / "split_my1_2026-11-20.csv", SPLIT_COLUMNS, split_rows)

    orders = folder / "orders_2026-11-20.jsonl"
    orders.write_text("".join(json.dumps(o) + "\n" for o in b.orders))
    deliveries = folder / "deliveries_2026-11-20.jsonl"
    deliveries.write_text("".join(json.dumps(d) + "\n" for d in b.deliveries))

    bad: list[Path] = []
    if malformed:
        bad = write_malformed(folder / "bad", sg[0])
    truth = {
        "unpaid_order": {"sg1:U1"},
        "delivered_not_paid": {"my1:U2"},
        "amount_mismatch": {"sg1:CMIS"},
        "duplicate_payment": {"sg1:PDUP"},
        "paid_not_delivered": {"sg1:CPND"},
        "payment_without_order": {"PP-ORPH"},
        "payout_mismatch": {"VouchCoSG-batch-77"},
    }
    groups = {
        "one_to_many": {"sg1:WSPLIT"},
        "refund": {"sg1:CREF"},
        "chargeback": {"sg1:CCB"},
        "payout": {"VouchCoMY-batch-78", "S-77"},
    }
    return World(payment_files=[card_sg, card_my, card_us, paypal, cod, wallet, split, *bad],
                 order_files=[orders], delivery_files=[deliveries], malformed=bad,
                 truth=truth, groups=groups, orders=b.totals)


def write_malformed(folder: Path, good_row: dict[str, str]) -> list[Path]:
    """Five files that must be refused: a truncated camt, an XML with an external entity, a
    CSV missing a column, three decimals in EUR, an unknown currency."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    minimal = CAMT / "camt053.v2.minimal.xml"
    truncated = folder / "bank_truncated_2026-11-20.xml"
    if minimal.exists():
        truncated.write_bytes(minimal.read_bytes()[:1500])
    else:
        truncated.write_text('<?xml version="1.0"?>\n<Document xmlns="urn:iso:std:iso:20022:'
                             'tech:xsd:camt.053.001.02"><BkToCstmrStmt><GrpHdr>')
    out.append(truncated)
    entity = folder / "bank_entity_2026-11-20.xml"
    entity.write_text('<?xml version="1.0"?>\n<!DOCTYPE Document [<!ENTITY xxe SYSTEM '
                      '"file:///etc/passwd">]>\n<Document xmlns="urn:iso:std:iso:20022:tech:'
                      'xsd:camt.053.001.02"><BkToCstmrStmt>&xxe;</BkToCstmrStmt></Document>\n')
    out.append(entity)
    out.append(write_csv(folder / "acquirer_missing_2026-11-20.csv",
                         [c for c in ACQUIRER_COLUMNS if c != "Net Currency"], [good_row]))
    eur = dict(good_row, **{"Gross Currency": "EUR", "Net Currency": "EUR",
                            "Gross Credit (GC)": "100.005", "Psp Reference": "PSP-EUR"})
    out.append(write_csv(folder / "acquirer_decimals_2026-11-20.csv", ACQUIRER_COLUMNS, [eur]))
    out.append(write_csv(folder / "wallet_xyz_2026-11-20.csv", WALLET_COLUMNS, [
        {"site": "sg1", "transaction_id": "WB-X", "type": "payment", "order_id": "W1",
         "created_at": "2026-11-20T13:00:00+08:00", "currency": "XYZ", "amount": "5.00",
         "settlement_id": "S-X", "customer_ref": ""}]))
    return out
