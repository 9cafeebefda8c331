"""The columnar path's whole result against the row engine's on the same day: every
discrepancy (all its fields), every match group, every order outcome and the counts, on a
generated day and on one with the cases the generator does not write (several payments of one
order in trace-id order, a cancelled order, refunds found through an order's reference or not
at all, wallet payouts, a type spelt another way, orders written in other time zones), with
and without the operator's corrections (accept, adjust, assign)."""

from __future__ import annotations

import csv
import json
import re
from collections import defaultdict
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from bench.reconcile import DAY, generate
from canonical import Money
from flows.reconcile import load_rules, read_sources
from flows.reconcile_columnar import ColumnarDay, ColumnarUnsupported, reconcile_columnar
from mappings.reconcile import (
    Correction,
    CorrectionKind,
    DayInput,
    DayResult,
    DiscrepancyClass,
    reconcile,
)
from state.remittance import group_row, outcome_row

ZONES = {"sg1": "Asia/Singapore", "my1": "Asia/Kuala_Lumpur"}
WHEN = f"{DAY} 12:00:00"
ISO = f"{DAY}T12:00:00+08:00"


def both(folder: Path, files: dict[str, list[Path]], corrections: tuple[Correction, ...] = (),
         *, exports: bool = False) -> tuple[ColumnarDay, DayResult]:
    """The columnar path on the CSV files, the row engine on the same day as JSON lines (with
    ``exports``, on the same orders and deliveries CSV exports the columnar path reads)."""
    rules = load_rules()
    columnar = reconcile_columnar(rules, DAY, orders=files["orders"],
                                  deliveries=files["deliveries"], acquirer=files["acquirer"],
                                  wallet=files["wallet"], keep=True, corrections=corrections,
                                  site_zones=ZONES)
    assert isinstance(columnar, ColumnarDay) and columnar.refused == []
    if exports:
        sources = read_sources([*files["acquirer"], *files["wallet"]], files["orders"],
                               files["deliveries"], day=DAY)
    else:
        sources = read_sources([*files["acquirer"], *files["wallet"]],
                               [folder / "orders.jsonl"], [folder / "deliveries.jsonl"])
    assert not sources.rejected
    row = reconcile(rules, DayInput(
        day=DAY, orders=sources.orders, traces=sources.traces, deliveries=sources.deliveries,
        payouts=sources.payouts, corrections=corrections, site_zones=ZONES))
    return columnar, row


def assert_same(columnar: ColumnarDay, row: DayResult, size: int = 700) -> None:
    """Every part equal, in the row engine's order; the chunks no larger than asked."""
    assert columnar.full_counts() == row.counts()
    assert columnar.discrepancies() == list(row.discrepancies)
    groups = list(columnar.group_rows(size))
    assert all(0 < len(chunk) <= size for chunk in groups)
    assert [g for chunk in groups for g in chunk] == [group_row(g) for g in row.groups]
    outcomes = [o for chunk in columnar.outcome_rows(size) for o in chunk]
    assert outcomes == [outcome_row(o) for o in row.outcomes]
    assert columnar.totals() == row.totals()


def add_order(folder: Path, files: dict[str, list[Path]], site: str, order_id: str,
              total: str, *, method: str = "card", ref: str | None = None,
              status: str = "confirmed", delivered: bool = True, created: str = ISO) -> None:
    """One order (and its delivery) in both the CSV the columnar path reads and the JSON
    lines the row engine reads."""
    currency = {"sg1": "SGD", "my1": "MYR"}[site]
    ref = ref or f"PSP{order_id}"
    with files["orders"][0].open("a", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerow(
            [site, order_id, status, created, currency, total, method, ref])
    money = {"amount": total, "currency": currency}
    with (folder / "orders.jsonl").open("a") as fh:
        fh.write(json.dumps({
            "site": site, "order_id": order_id, "status": status, "created_at": created,
            "updated_at": created, "currency": currency,
            "lines": [{"line_id": "1", "sku": "GIFT", "quantity": 1, "unit_price": money}],
            "payment": {"method": method, "provider": "p", "provider_reference": ref,
                        "amount": money}}) + "\n")
    if delivered:
        with files["deliveries"][0].open("a", newline="") as fh:
            csv.writer(fh, lineterminator="\n").writerow([site, order_id, "delivered", "1"])
        with (folder / "deliveries.jsonl").open("a") as fh:
            fh.write(json.dumps({
                "delivery_id": f"d-{order_id}", "site": site, "order_id": order_id,
                "kind": "codes", "quantity": 1, "delivered_at": ISO,
                "source": "test"}) + "\n")


def card_row(files: dict[str, list[Path]], site: str, psp: str, merchant_ref: str,
             amount: str, *, kind: str = "Settled", modification: str = "",
             batch: str = "0") -> None:
    """An acquirer row: a credit with a 1% commission for a payment, a debit otherwise."""
    currency = {"sg1": "SGD", "my1": "MYR"}[site]
    credit = kind.replace(" ", "").lower().startswith("settled")
    minor = int(Decimal(amount) * 100)
    fee = minor // 100 if credit else 0
    net = f"{(minor - fee) // 100}.{(minor - fee) % 100:02d}"
    with files["acquirer"][0].open("a", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerow(
            ["VouchCo", f"VouchCo{site.upper()}", psp, merchant_ref, "visa", WHEN, "SGT", kind,
             modification, currency, "" if credit else amount, amount if credit else "", "1",
             currency, "" if credit else net, net if credit else "",
             f"{fee // 100}.{fee % 100:02d}", "", "", "", "visacredit", batch])


def wallet_row(files: dict[str, list[Path]], site: str, transaction: str, kind: str,
               order_id: str, amount: str, settlement: str, customer: str = "") -> None:
    currency = {"sg1": "SGD", "my1": "MYR"}[site]
    with files["wallet"][0].open("a", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerow(
            [site, transaction, kind, order_id, ISO, currency, amount, settlement, customer])


def extra_day(folder: Path, n: int) -> dict[str, list[Path]]:
    """A generated day of ``n`` orders plus the cases the generator does not write."""
    files = generate(folder, n, jsonl=True)["files"]
    # three payments of one order on one day: which one repeats another depends on their
    # order (booking date, then trace id); one found by its merchant reference only
    add_order(folder, files, "sg1", "OXA1", "30.00")
    card_row(files, "sg1", "PSPOXA1", "OXA1", "10.00")
    card_row(files, "sg1", "PSPXA2", "OXA1", "20.00")
    card_row(files, "sg1", "PSPXA3", "OXA1", "20.00", kind="settled")  # spelt another way
    # three payments of the whole amount: the two later by trace id repeat the first
    add_order(folder, files, "my1", "OXA2", "12.00")
    for i in range(3):
        card_row(files, "my1", f"PSPXA2{i}", "OXA2", "12.00")
    # cancelled: paid (0 was expected) and not paid
    add_order(folder, files, "my1", "OXB1", "15.00", status="cancelled", delivered=False)
    card_row(files, "my1", "PSPOXB1", "OXB1", "15.00")
    add_order(folder, files, "my1", "OXB2", "16.00", status="cancelled", delivered=False)
    # a refund of a payment never seen: found through the order's payment reference
    add_order(folder, files, "sg1", "OXD1", "40.00")
    card_row(files, "sg1", "PSPOXD1", "", "40.00", kind="Refunded", modification="REFXD1")
    # a refund and a chargeback that name nothing known
    card_row(files, "sg1", "PSPNONE1", "XNONE1", "7.00", kind="Refunded", modification="R9")
    card_row(files, "my1", "PSPNONE2", "", "8.00", kind="Chargeback")
    # wallet: a settlement paid out exactly, one paid out with nothing in it, a refund
    # found through its order id, a payment without order with a customer reference
    add_order(folder, files, "sg1", "OXE1", "12.00", method="wallet_balance", ref="WBXE1")
    wallet_row(files, "sg1", "WBXE1", "payment", "OXE1", "12.00", "SW1")
    wallet_row(files, "sg1", "WRXE1", "refund", "OXE1", "2.00", "SW1")
    wallet_row(files, "sg1", "WPO1", "payout", "", "10.00", "SW1")
    wallet_row(files, "my1", "WPO2", "payout", "", "5.00", "SW-EMPTY")
    wallet_row(files, "my1", "WBXZ1", "payment", "XNONE3", "3.00", "SW2", customer="C77")
    # written in other zones: the day on the site's clock is the day (as written it is the
    # day before), and the next day (as written it is the day)
    add_order(folder, files, "sg1", "OXZ1", "9.00", created=f"{DAY - timedelta(days=1)}"
              "T20:00:00-05:00", delivered=False)
    add_order(folder, files, "sg1", "OXZ2", "9.00", created=f"{DAY}T23:30:00-02:00",
              delivered=False)
    return files


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[Path]]]:
    folder = tmp_path_factory.mktemp("day")
    return folder, extra_day(folder, 1000)


def test_a_generated_day_gives_the_row_engines_whole_result(tmp_path):
    data = generate(tmp_path, 1000, jsonl=True)
    columnar, row = both(tmp_path, data["files"])
    try:
        assert_same(columnar, row)
        # what the comparison covers: every class and group kind there, and repeated
        # payments whose trace ids do not sort as their references
        counts = row.counts()
        assert all(counts[k] for k in counts if k != "group:one_to_many"
                   and k != "group:chargeback"), counts
        repeats = [d for d in row.discrepancies if d.cls is DiscrepancyClass.DUPLICATE_PAYMENT]
        assert len(repeats) == 5
        assert any(d.trace_ids[0].startswith("card-") for d in repeats)
    finally:
        columnar.close()


def test_the_cases_the_generator_does_not_write_give_the_row_engines_result(day):
    folder, files = day
    columnar, row = both(folder, files)
    try:
        assert_same(columnar, row)
        by_order = defaultdict(list)
        for d in row.discrepancies:
            by_order[d.order_id or d.payout_id or d.trace_ids[0]].append(d)
        # the cases are what they are meant to be
        [repeat] = by_order["OXA2"]
        group = next(g for g in row.groups if g.order_id == "OXA2")
        assert repeat.cls is DiscrepancyClass.DUPLICATE_PAYMENT
        assert (*group.trace_ids, *repeat.trace_ids) == tuple(sorted(
            (*group.trace_ids, *repeat.trace_ids)))
        assert [d.cls for d in by_order["OXA1"]] == [DiscrepancyClass.DUPLICATE_PAYMENT]
        assert [d.detail for d in by_order["OXB1"]] == [
            "received 15.00 MYR for an order of 0 (tolerance 0.00)"]
        assert [d.cls for d in by_order["OXD1"]] == [DiscrepancyClass.DELIVERED_NOT_PAID]
        assert "OXB2" not in by_order
        assert [d.cls for d in by_order["OXZ1"]] == [DiscrepancyClass.UNPAID_ORDER]
        assert "OXZ2" not in by_order
        assert [d.cls for d in by_order["SW-EMPTY"]] == [DiscrepancyClass.PAYOUT_MISMATCH]
        assert "SW1" not in by_order and any(g.payout_id == "SW1" for g in row.groups)
        orphans = [d.detail for d in row.discrepancies
                   if d.cls is DiscrepancyClass.PAYMENT_WITHOUT_ORDER]
        assert any("customer_reference=C77" in t for t in orphans)
        assert any(t.startswith("refund 7.00 SGD from acquirer_") and "original_reference=PSPNONE1" in t
                   for t in orphans)
        kinds = {(g.kind.value, g.order_id, g.rule) for g in row.groups}
        assert ("refund", "OXD1", "original_reference") in kinds
        assert ("refund", "OXE1", "merchant_reference->order_id") in kinds
        assert ("one_to_many", "OXA1", "merchant_reference->order_id,"
                "provider_reference->provider_reference") in kinds
    finally:
        columnar.close()


def test_corrections_accept_and_adjust_as_the_row_engine_takes_them(day):
    folder, files = day
    sgd = Money(amount=Decimal("1.00"), currency="SGD")
    corrections = (
        # the unpaid sg1:O000000000 paid by an adjustment; an amount short by 1.00 made up;
        # one in another currency, at the rules' rate (0.50 USD is 0.675 SGD, rounded)
        Correction(CorrectionKind.ADJUST, "order:sg1:O000000000",
                   Money(amount=Decimal("5.00"), currency="SGD")),
        Correction(CorrectionKind.ADJUST, "order:sg1:O000000016", sgd),
        Correction(CorrectionKind.ADJUST, "order:sg1:O000000002",
                   Money(amount=Decimal("0.50"), currency="USD")),
        # a repeated payment's order adjusted down by one payment: both count
        Correction(CorrectionKind.ADJUST, "order:sg1:O000000022",
                   Money(amount=Decimal("-13.14"), currency="SGD")),
        # an order that is not there; a currency no rate converts
        Correction(CorrectionKind.ADJUST, "order:sg1:NOPE", sgd),
        Correction(CorrectionKind.ADJUST, "order:my1:O000000001",
                   Money(amount=Decimal("1.00"), currency="JPY")),
        # accepted: an order's, a trace's and a payout's discrepancies
        Correction(CorrectionKind.ACCEPT, "order:sg1:O000000004"),
        Correction(CorrectionKind.ACCEPT, "order:my1:OXA2"),
        Correction(CorrectionKind.ACCEPT, "payout:SW-EMPTY"),
    )
    plain, _ = both(folder, files)
    try:
        orphan = next(d for d in plain.discrepancies()
                      if d.cls is DiscrepancyClass.PAYMENT_WITHOUT_ORDER)
    finally:
        plain.close()
    corrections += (Correction(CorrectionKind.ACCEPT, f"trace:{orphan.trace_ids[0]}"),)
    columnar, row = both(folder, files, corrections)
    try:
        assert_same(columnar, row)
        accepted = {d.order_id or d.payout_id or d.trace_ids[0]
                    for d in row.discrepancies if d.status == "accepted"}
        # the payout of the batch the accepted trace is in names it too: accepted with it
        batch = next(d.payout_id for d in row.discrepancies if d.payout_id
                     and orphan.trace_ids[0] in d.trace_ids)
        assert accepted == {"O000000004", "OXA2", "SW-EMPTY", orphan.trace_ids[0], batch}
        classes = defaultdict(list)
        for d in row.discrepancies:
            classes[(d.site, d.order_id)].append((d.cls.value, d.detail))
        assert ("sg1", "O000000016") not in classes and ("sg1", "O000000022") not in classes
        assert classes[("sg1", "O000000000")] == [
            ("paid_not_delivered", "paid, but no delivery evidence")]
        assert classes[("sg1", "O000000002")][0] == (
            "amount_mismatch", "received 0.68 SGD for an order of 5.74 (tolerance 0.00)")
        assert [c for c, _ in classes[("my1", "O000000001")]] == ["unpaid_order"]
    finally:
        columnar.close()


def test_assign_corrections_as_the_row_engine_takes_them(day):
    """Payments and a refund that name no order, assigned to orders (one that is not
    there); one assigned to an order in another currency is left to the row engine."""
    folder, files = day
    plain, row = both(folder, files)
    plain.close()
    orphans = [d for d in row.discrepancies if d.cls is DiscrepancyClass.PAYMENT_WITHOUT_ORDER]
    sgd = [d for d in orphans if d.actual and d.actual.currency == "SGD"]
    payment = next(d for d in sgd if d.detail.startswith("payment "))
    refund = next(d for d in sgd if d.detail.startswith("refund "))
    wallet = next(d for d in orphans if d.trace_ids[0].startswith("wallet-"))
    corrections = (
        Correction(CorrectionKind.ASSIGN, f"trace:{payment.trace_ids[0]}",
                   assign_to="order:sg1:O000000006"),
        Correction(CorrectionKind.ASSIGN, f"trace:{refund.trace_ids[0]}",
                   assign_to="order:sg1:O000000008"),
        Correction(CorrectionKind.ASSIGN, f"trace:{wallet.trace_ids[0]}",
                   assign_to="order:my1:NOPE"),
    )
    columnar, row = both(folder, files, corrections)
    try:
        assert_same(columnar, row)
        rules = {(g.order_id, g.kind.value): g.rule for g in row.groups}
        assert rules[("O000000006", "one_to_one")] == "assigned"
        assert rules[("O000000008", "refund")] == "assigned"
        left = {d.trace_ids[0] for d in row.discrepancies
                if d.cls is DiscrepancyClass.PAYMENT_WITHOUT_ORDER}
        assert wallet.trace_ids[0] in left and payment.trace_ids[0] not in left
    finally:
        columnar.close()
    myr = next(d for d in orphans if d.actual and d.actual.currency == "MYR"
               and d.trace_ids[0].startswith("card-"))
    with pytest.raises(ColumnarUnsupported, match="another currency"):
        reconcile_columnar(load_rules(), DAY, orders=files["orders"],
                           deliveries=files["deliveries"], acquirer=files["acquirer"],
                           wallet=files["wallet"], keep=True, corrections=(
                               Correction(CorrectionKind.ASSIGN, f"trace:{myr.trace_ids[0]}",
                                          assign_to="order:sg1:O000000000"),))


def test_without_keep_the_database_is_closed_and_the_counts_are_the_same(day):
    folder, files = day
    rules = load_rules()
    plain = reconcile_columnar(rules, DAY, orders=files["orders"],
                               deliveries=files["deliveries"], acquirer=files["acquirer"],
                               wallet=files["wallet"], labels=True)
    assert not isinstance(plain, ColumnarDay)
    columnar, row = both(folder, files)
    try:
        assert plain.counts == columnar.counts
        assert {k: v for k, v in row.counts().items() if v} == \
            {k: v for k, v in plain.counts.items() if v}
    finally:
        columnar.close()
    with pytest.raises(ValueError, match="closed"):
        columnar.discrepancies()


@pytest.mark.parametrize("kind", ["payment", "refund"])
def test_a_wallet_payment_or_refund_without_order_is_refused_as_the_row_reader_refuses_it(
        tmp_path, kind):
    files = generate(tmp_path, 50)["files"]
    bad = tmp_path / "wallet_bad.csv"
    lines = files["wallet"][0].read_text().splitlines()
    bad.write_text("\n".join([lines[0], lines[1], f"sg1,WB1,{kind}, ,{ISO},SGD,1.00,S0,",
                              lines[2]]) + "\n")
    columnar = reconcile_columnar(load_rules(), DAY, orders=files["orders"],
                                  deliveries=files["deliveries"], acquirer=files["acquirer"],
                                  wallet=[bad, *files["wallet"]])
    rows = read_sources([bad])
    assert columnar.refused == [rows.rejected[0].error] == [
        f"wallet_bad.csv: line 3: order_id: a {kind} names its order [required]"]
    assert columnar.orders == 50


def test_every_fee_column_counts_and_optional_columns_may_be_left_out(tmp_path):
    """Markup, scheme fees and interchange are part of a payment's fee as the row reader sums
    them (the outcome's and group's fee, so the remittance batch's); a settlement file
    without the fee columns, the modification reference or the exchange rate is read as
    the row reader reads it."""
    from connectors.payments.acquirer import REQUIRED

    files = generate(tmp_path, 500, jsonl=True)["files"]
    add_order(tmp_path, files, "sg1", "OFEE1", "50.00")
    with files["acquirer"][0].open("a", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerow(
            ["VouchCo", "VouchCoSG1", "PSPOFEE1", "OFEE1", "visa", WHEN, "SGT", "Settled", "",
             "SGD", "", "50.00", "1", "SGD", "", "48.00", "0.50", "0.30", "0.70", "0.50",
             "visacredit", "0"])
    add_order(tmp_path, files, "my1", "OBARE1", "20.00")
    bare = tmp_path / "acquirer_bare.csv"
    with bare.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(REQUIRED)
        row = dict.fromkeys(REQUIRED, "")
        row.update({"Merchant Account": "VouchCoMY1", "Psp Reference": "PSPOBARE1",
                    "Merchant Reference": "OBARE1", "Creation Date": WHEN, "TimeZone": "SGT",
                    "Type": "Settled", "Gross Currency": "MYR", "Gross Credit (GC)": "20.00",
                    "Net Currency": "MYR", "Net Credit (NC)": "20.00", "Batch Number": "B"})
        writer.writerow([row[c] for c in REQUIRED])
    files["acquirer"].append(bare)
    columnar, row = both(tmp_path, files)
    try:
        assert_same(columnar, row)
        [fee] = [g["fee"] for chunk in columnar.group_rows() for g in chunk
                 if g["order_id"] == "OFEE1"]
        assert fee == Decimal("2.00")
        assert [o["received"] for chunk in columnar.outcome_rows() for o in chunk
                if o["order_id"] == "OBARE1"] == [Decimal("20.00")]
    finally:
        columnar.close()


@pytest.mark.parametrize("pad", [" ", "\u00a0", "\u3000"])
@pytest.mark.parametrize("source", ["acquirer", "wallet"])
def test_a_trace_read_twice_with_spaces_around_its_parts_is_found(tmp_path, source, pad):
    """A trace read twice is found when the copy has space separators (DuckDB's ``trim``:
    the ASCII space, a no-break space, an ideographic space) around the parts of its trace
    id (an acquirer row's merchant account and PSP reference, a wallet row's transaction
    id): the parts are compared trimmed, as its trace id is made of them."""
    files = generate(tmp_path, 50)["files"]
    path = files[source][0]
    lines = path.read_text(encoding="utf-8").splitlines()
    fields = next(csv.reader([lines[1]]))
    if source == "acquirer":  # its merchant account and PSP reference
        fields[1], fields[2] = pad + fields[1], fields[2] + pad
    else:  # its transaction id
        fields[1] = pad + fields[1] + pad
    with path.open("a", newline="", encoding="utf-8") as fh:
        csv.writer(fh, lineterminator="\n").writerow(fields)
    with pytest.raises(ColumnarUnsupported,
                       match=r"^1 trace\(s\) read twice \(the row engine counts each once\)$"):
        reconcile_columnar(load_rules(), DAY, orders=files["orders"],
                           deliveries=files["deliveries"], acquirer=files["acquirer"],
                           wallet=files["wallet"], keep=True)


@pytest.mark.parametrize("pad", [" ", "\u00a0", "\t", "\n", "\r", "\x0b", "\x0c", "\x1c",
                                 "\x1f", "\x85", "\u2028", "\u2029", " \t"])
@pytest.mark.parametrize("source", ["acquirer", "wallet", "wallet site"])
def test_a_trace_read_twice_with_any_whitespace_around_its_parts_is_found(tmp_path, source,
                                                                          pad):
    """The row readers strip a trace id's parts with ``str.strip``, which takes off every
    whitespace character (tabs, line breaks, the information separators \\x1c-\\x1f, the
    next-line character...), not only the space separators DuckDB's ``trim`` takes off; and
    a wallet row's site is stripped before it is a part (``wallet:`` is put in front of the
    account, not of the part). A copy padded so is the same trace to the row engine (checked
    here), and is found read twice."""
    files = generate(tmp_path, 50)["files"]
    path = files["wallet" if source.startswith("wallet") else source][0]
    lines = path.read_text(encoding="utf-8").splitlines()
    fields = next(csv.reader([lines[1]]))
    if source == "acquirer":  # its merchant account, PSP reference and batch
        fields[1], fields[2], fields[-1] = pad + fields[1], fields[2] + pad, pad + fields[-1]
    elif source == "wallet":  # its transaction id
        fields[1] = pad + fields[1] + pad
    else:  # its site
        fields[0] = pad + fields[0] + pad
    # a field with whitespace around it in quotes (csv.writer with "\n" lines leaves a \r
    # unquoted, and a reader ends the row there)
    with path.open("a", newline="", encoding="utf-8") as fh:
        fh.write(",".join('"' + f.replace('"', '""') + '"'
                          if f != f.strip() or "," in f or '"' in f else f
                          for f in fields) + "\n")
    rows = read_sources([path])
    assert not rows.rejected
    assert rows.traces[-1].trace_id == rows.traces[0].trace_id
    with pytest.raises(ColumnarUnsupported,
                       match=r"^1 trace\(s\) read twice \(the row engine counts each once\)$"):
        reconcile_columnar(load_rules(), DAY, orders=files["orders"],
                           deliveries=files["deliveries"], acquirer=files["acquirer"],
                           wallet=files["wallet"], keep=True)


def write_padded(path: Path, fields: list[str]) -> None:
    """A CSV row whose fields with whitespace around them are quoted (as a reader keeps
    them; ``csv.writer`` with "\\n" lines leaves a \\r or a tab unquoted)."""
    with path.open("a", newline="", encoding="utf-8") as fh:
        fh.write(",".join('"' + f.replace('"', '""') + '"'
                          if f != f.strip() or "," in f or '"' in f else f
                          for f in fields) + "\n")


PADS = [" ", "\t", "\u00a0", "\x1c", "\x85", "\u3000", " \t"]


def padded_day(folder: Path, pad: str) -> dict[str, list[Path]]:
    """A generated day plus orders, deliveries and payments whose text fields have ``pad``
    around them, which the row readers strip (``str.strip``) before they match."""
    files = generate(folder, 50, jsonl=True)["files"]
    orders, deliveries = files["orders"][0], files["deliveries"][0]
    acquirer, wallet = files["acquirer"][0], files["wallet"][0]

    def p(text: str) -> str:
        return pad + text + pad

    def amount(text: str) -> str:
        # an amount padded with what the casts take as the row readers do (ASCII spaces and
        # tabs); any other whitespace makes the day the row engine's (the test below)
        return p(text) if not pad.strip(" \t") else text

    # card payments found by a padded PSP reference, a padded merchant reference (its PSP
    # reference names nothing), and an order whose own reference is padded
    card = ["VouchCo", "VouchCoSG1", "", "", "visa", WHEN, "SGT", "Settled", "", "SGD", "",
            "30.00", "1", "SGD", "", "29.70", "0.30", "", "", "", "visacredit", "0"]
    for order_id, psp, mref, ref in (("OPAD1", p("PSPOPAD1"), "XX", "PSPOPAD1"),
                                     ("OPAD2", "PSPZZZ2", p("OPAD2"), "PSPOPAD2"),
                                     ("OPAD3", "PSPOPAD3", "XX", p("PSPOPAD3"))):
        write_padded(orders, ["sg1", order_id, "confirmed", ISO, "SGD", "30.00", "card", ref])
        write_padded(deliveries, ["sg1", order_id, "delivered", "1"])
        write_padded(acquirer, [*card[:2], psp, mref, *card[4:]])
    # a refund whose original reference and modification reference are padded
    write_padded(acquirer, ["VouchCo", "VouchCoSG1", p("PSPOPAD1"), "", "visa", WHEN, "SGT",
                            "Refunded", p("REFPAD1"), "SGD", "5.00", "", "1", "SGD", "5.00",
                            "", "", "", "", "", "visacredit", "0"])
    # an order, its delivery and its payment with padded site, id, status and method,
    # padded amounts (the order's total, the payment's gross, net and fee)
    write_padded(orders, [p("sg1"), p("OPAD4"), p("confirmed"), ISO, "SGD", amount("40.00"),
                          p("card"), "PSPOPAD4"])
    write_padded(deliveries, [p("sg1"), p("OPAD4"), p("delivered"), p("1")])
    write_padded(acquirer, [*card[:2], "PSPOPAD4", "OPAD4", *card[4:10], "", amount("40.00"),
                            "1", "SGD", "", amount("39.60"), amount("0.40"), *card[17:]])
    # a padded type, time zone and merchant account (a payout batch of its own)
    write_padded(orders, ["sg1", "OPAD5", "confirmed", ISO, "SGD", "20.00", "card",
                          "PSPOPAD5"])
    write_padded(deliveries, ["sg1", "OPAD5", "delivered", "1"])
    write_padded(acquirer, ["VouchCo", p("VouchCoSG1"), "PSPOPAD5", "OPAD5", "visa", WHEN,
                            p("SGT"), p("Settled"), "", "SGD", "", "20.00", "1", "SGD", "",
                            "19.80", "0.20", "", "", "", "visacredit", p("PADB")])
    write_padded(acquirer, ["VouchCo", "VouchCoSG1", "PAYPADB", "", "", WHEN, "SGT",
                            p("MerchantPayout"), "", "", "", "", "", "SGD", "19.80", "", "",
                            "", "", "", "", "PADB"])
    # wallet: a payment naming its order by a padded order id, one with a padded
    # transaction id and type, a padded settlement paid out
    write_padded(orders, ["sg1", "OPAD6", "confirmed", ISO, "SGD", "12.00", "wallet_balance",
                          "WBPAD6"])
    write_padded(deliveries, ["sg1", "OPAD6", "delivered", "1"])
    write_padded(wallet, ["sg1", "WBXXX6", "payment", p("OPAD6"), ISO, "SGD", "12.00",
                          p("SWPAD"), ""])
    write_padded(orders, ["my1", "OPAD7", "confirmed", ISO, "MYR", "13.00", "wallet_balance",
                          "WBPAD7"])
    write_padded(deliveries, ["my1", "OPAD7", "delivered", "1"])
    write_padded(wallet, [p("my1"), p("WBPAD7"), p("payment"), "OPAD7", ISO, "MYR",
                          amount("13.00"), "SWPAD7", p("C7")])
    write_padded(wallet, ["sg1", "WPOPAD", p("payout"), "", ISO, "SGD", "12.00", "SWPAD", ""])
    return files


@pytest.mark.parametrize("pad", PADS)
def test_text_with_whitespace_around_it_is_read_as_the_row_readers_strip_it(tmp_path, pad):
    """The row readers strip every text field (``str.strip``: the space separators, tabs,
    the information separators, the next-line character...) and take an empty one as
    missing: a padded reference, order id, site, status, method, type, time zone, batch or
    amount matches as it does for the row engine, which reads the same CSV exports."""
    files = padded_day(tmp_path, pad)
    columnar, row = both(tmp_path, files, exports=True)
    try:
        assert_same(columnar, row)
        reported = {d.order_id for d in row.discrepancies}
        assert not reported & {f"OPAD{i}" for i in range(1, 8)}
        assert not any(d.payout_id in ("SWPAD", "VouchCoSG1-batch-PADB")
                       for d in row.discrepancies)
        groups = {(g.kind.value, g.order_id) for g in row.groups}
        assert {("one_to_one", f"OPAD{i}") for i in range(1, 8)} <= groups
        assert ("refund", "OPAD1") in groups
    finally:
        columnar.close()


@pytest.mark.parametrize("pad", PADS)
@pytest.mark.parametrize(("source", "column"), [
    ("orders", "currency"), ("orders", "created_at"), ("acquirer", "Gross Currency"),
    ("acquirer", "Creation Date"), ("wallet", "currency"), ("wallet", "created_at"),
    ("orders", "total"), ("acquirer", "Gross Credit (GC)"), ("acquirer", "Net Credit (NC)"),
    ("acquirer", "Commission (NC)"), ("wallet", "amount")])
def test_a_padded_currency_time_or_amount_is_read_as_the_row_engine_reads_it(
        tmp_path, pad, source, column):
    """A currency, a time or an amount with whitespace around it, which the row readers strip
    and take, is not refused: a time or an amount the typed read or the cast takes so
    (spaces, tabs) gives the row engine's result, and any other the day is the row
    engine's (``ColumnarUnsupported``)."""
    files = generate(tmp_path, 50, jsonl=True)["files"]
    path = files[source][0]
    lines = path.read_text(encoding="utf-8").splitlines()
    header = next(csv.reader([lines[0]]))
    fields = next(csv.reader([lines[1]]))
    at = header.index(column)
    fields[at] = pad + fields[at] + pad
    path.write_text("\n".join([lines[0], *lines[2:]]) + "\n", encoding="utf-8")
    write_padded(path, fields)
    try:
        columnar, row = both(tmp_path, files, exports=True)
    except ColumnarUnsupported as exc:
        assert str(exc) == (f"{path.name}: line {len(lines)}: {column}: "
                            f"{fields[at]!r} has whitespace around it (the row engine "
                            "strips it)")
        assert "currency" in column.lower() or pad.strip(" \t")
        assert not read_sources([*files["acquirer"], *files["wallet"]], files["orders"],
                                files["deliveries"], day=DAY).rejected
    else:
        assert "currency" not in column.lower()
        try:
            assert_same(columnar, row)
        finally:
            columnar.close()


@pytest.mark.parametrize("pad", ["", " ", "\u00a0\t"])
@pytest.mark.parametrize(("source", "column"), [
    ("acquirer", "Merchant Account"), ("acquirer", "Creation Date"), ("acquirer", "TimeZone"),
    ("acquirer", "Type"), ("wallet", "site"), ("wallet", "transaction_id"),
    ("wallet", "created_at"), ("wallet", "currency"), ("wallet", "amount")])
def test_a_required_field_empty_or_of_whitespace_only_is_refused_as_the_row_reader_refuses_it(
        tmp_path, pad, source, column):
    files = generate(tmp_path, 50)["files"]
    path = files[source][0]
    lines = path.read_text(encoding="utf-8").splitlines()
    header = next(csv.reader([lines[0]]))
    fields = next(csv.reader([lines[2]]))
    fields[header.index(column)] = pad
    path.write_text("\n".join(lines[:2]) + "\n", encoding="utf-8")
    write_padded(path, fields)
    with path.open("a", encoding="utf-8") as fh:
        fh.write("\n".join(lines[3:]) + "\n")
    columnar = reconcile_columnar(load_rules(), DAY, orders=files["orders"],
                                  deliveries=files["deliveries"], acquirer=files["acquirer"],
                                  wallet=files["wallet"])
    assert columnar.refused == [read_sources([path]).rejected[0].error] == [
        f"{path.name}: line 3: {column}: empty; a value is required [required]"]


# files the row engine refuses, or reads otherwise than a typed read ---------------------------
def both_refusing(files: dict[str, list[Path]]) -> tuple[ColumnarDay, DayResult, list[str]]:
    """The columnar path and the row engine on the same CSV files, some of which the row
    engine refuses: the columnar result, the row engine's, and the row engine's refusals (in
    the order the files were given: orders, deliveries, card, wallet)."""
    columnar = reconcile_columnar(load_rules(), DAY, orders=files["orders"],
                                  deliveries=files["deliveries"], acquirer=files["acquirer"],
                                  wallet=files["wallet"], keep=True, site_zones=ZONES)
    assert isinstance(columnar, ColumnarDay)
    return (columnar, *rows_only(files))


def rows_only(files: dict[str, list[Path]]) -> tuple[DayResult, list[str]]:
    """The row engine's side of ``both_refusing`` (alone, for a day the columnar path
    leaves to it)."""
    sources = read_sources([*files["acquirer"], *files["wallet"]], files["orders"],
                           files["deliveries"], day=DAY)
    row = reconcile(load_rules(), DayInput(
        day=DAY, orders=sources.orders, traces=sources.traces, deliveries=sources.deliveries,
        payouts=sources.payouts, site_zones=ZONES))
    return row, [o.error or "" for o in sources.rejected]


def assert_read_alike(files: dict[str, list[Path]]) -> DayResult:
    """Both engines read every file of the day, with the same whole result (the row
    engine's returned)."""
    columnar, row, refused = both_refusing(files)
    try:
        assert refused == [] == columnar.refused
        assert_same(columnar, row)
    finally:
        columnar.close()
    return row


def split_off(files: dict[str, list[Path]], kind: str, rows: int = 10) -> Path:
    """The first ``rows`` data rows of the day's ``kind`` file moved to a file of their own
    (``{kind}_part.csv``, given first), the rest left where they were: a file to spoil while
    the other is read."""
    path = files[kind][0]
    lines = path.read_text(encoding="utf-8").splitlines()
    part = path.with_name(f"{kind}_part.csv")
    part.write_text("\n".join(lines[:rows + 1]) + "\n", encoding="utf-8")
    path.write_text("\n".join([lines[0], *lines[rows + 1:]]) + "\n", encoding="utf-8")
    files[kind].insert(0, part)
    return part


def set_cells(path: Path, line: int, cells: dict[str, str]) -> None:
    """The cells of one line of a CSV file replaced (by column name; quoted where their
    whitespace needs it)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    header = next(csv.reader([lines[0]]))
    fields = next(csv.reader([lines[line - 1]]))
    for column, value in cells.items():
        fields[header.index(column)] = value
    path.write_text("\n".join(lines[:line - 1]) + "\n", encoding="utf-8")
    write_padded(path, fields)
    with path.open("a", encoding="utf-8") as fh:
        fh.write("".join(x + "\n" for x in lines[line:]))


EMPTIES = ["", " ", "\u00a0\t"]


def assert_refused_alike(tmp_path: Path, kind: str, column: str, value: str) -> str:
    """One cell of line 3 of a part of the day's ``kind`` export set to ``value``: the row
    engine refuses that part naming line, field and rule, the columnar path refuses it with
    the same words, and both read the day's other files alike (the whole result compared).
    Returns the rule (``[...]``)."""
    files = generate(tmp_path, 50)["files"]
    part = split_off(files, kind)
    set_cells(part, 3, {column: value})
    columnar, row, refused = both_refusing(files)
    try:
        assert len(refused) == 1 and refused[0].startswith(f"{part.name}: line 3: ")
        rule = re.search(r" (\[[a-z_]+\])$", refused[0])
        assert rule, refused[0]
        assert columnar.refused == refused
        assert_same(columnar, row)
        assert columnar.orders == len(row.outcomes) > 30
    finally:
        columnar.close()
    return rule.group(1)


@pytest.mark.parametrize(("column", "value"), [
    *((c, pad) for c in ("site", "order_id", "status", "created_at", "currency", "total")
      for pad in EMPTIES),
    ("status", "lost"), ("status", "Confirmed"), ("status", " confirmed\u00a0x"),
    # a payment named by a method without reference, or a reference without method, or a
    # method the canonical order does not know
    ("method", ""), ("method", " "), ("method", "bitcoin"), ("method", "Card"),
    ("provider_reference", ""), ("provider_reference", "\t"),
    # longer than the canonical order takes
    ("provider_reference", "P" * 201), ("order_id", "O" * 101), ("site", "s" * 33),
    # a time, a currency or a total the row reader refuses by the payment readers' rules
    # (before the canonical order sees it: it alone would take an exponent, a digit
    # separator, a sign)
    ("created_at", "2026-11-2x"), ("created_at", "never"), ("currency", "XXQ"),
    ("currency", "sgd"), ("total", "12.345"), ("total", "abc"), ("total", "1E2"),
    ("total", "-5.00"), ("total", "1_0.00"),
])
def test_an_orders_export_the_row_engine_refuses_is_refused_with_its_words(
        tmp_path, column, value):
    """An order whose required field is empty (or of whitespace only), whose status or
    method the canonical order rejects, whose text is longer than it takes, or whose time,
    currency or total breaks the payment readers' rules: the row engine refuses its file
    naming line, field and rule; the columnar path refuses the same file with the same
    words, and reads the day's other files as the row engine does (the whole result
    compared)."""
    assert_refused_alike(tmp_path, "orders", column, value)


@pytest.mark.parametrize("total", ["1234567890123.00"])
def test_an_orders_export_total_the_row_engine_reads_and_the_cast_does_not_is_left_to_it(
        tmp_path, total):
    """The row engine reads an order's total of more digits than the cast takes. The
    columnar path does not refuse the file the row engine reads: the day is the row
    engine's (named: file, line, column)."""
    files = generate(tmp_path, 50)["files"]
    set_cells(files["orders"][0], 3, {"total": total})
    row, refused = rows_only(files)
    assert refused == [] and len(row.outcomes) == 50
    with pytest.raises(ColumnarUnsupported) as caught:
        reconcile_columnar(load_rules(), DAY, orders=files["orders"],
                           deliveries=files["deliveries"], acquirer=files["acquirer"],
                           wallet=files["wallet"], keep=True, site_zones=ZONES)
    assert str(caught.value).startswith(f"{files['orders'][0].name}: line 3: total: "
                                        f"{total!r} is read by the row reader, not by this "
                                        "path (")
    assert str(caught.value).endswith("; the row engine reads it)")


def test_an_order_without_method_and_reference_is_read_as_the_row_engine_reads_it(tmp_path):
    """No method and no reference: an order without payment, which the row engine reads
    (its method ``unknown``)."""
    files = generate(tmp_path, 50)["files"]
    set_cells(files["orders"][0], 3, {"method": "", "provider_reference": " "})
    columnar, row, refused = both_refusing(files)
    try:
        assert refused == [] and columnar.refused == []
        assert_same(columnar, row)
        assert "unknown" in {o.method for o in row.outcomes}
    finally:
        columnar.close()


@pytest.mark.parametrize(("column", "value"), [
    *((c, pad) for c in ("site", "order_id", "status", "quantity") for pad in EMPTIES),
    ("status", "lost"), ("status", "DELIVERED"), ("status", "Delivered "),
    ("quantity", "-1"), ("quantity", "1.5"), ("quantity", "10001"), ("quantity", "one"),
    ("quantity", "1e2"), ("quantity", "0x1"), ("quantity", "1."),
])
def test_a_delivery_export_the_row_engine_refuses_is_refused_with_its_words(
        tmp_path, column, value):
    """The same for delivery evidence: a row with an empty site, order id, status or
    quantity, a status the canonical delivery rejects, or a quantity it does not take (the
    cast takes '1.5' as 2, '1e2' as 100, '0x1' as 1)."""
    assert "[invalid_record]" == assert_refused_alike(tmp_path, "deliveries", column, value)


def test_refused_orders_and_deliveries_are_listed_in_the_order_given(tmp_path):
    """Refusals of several files, each of a different rule, in the row engine's order and
    words; the day's good files read."""
    files = generate(tmp_path, 50)["files"]
    orders, deliveries = split_off(files, "orders"), split_off(files, "deliveries")
    set_cells(orders, 5, {"status": "lost"})
    set_cells(orders, 3, {"total": "12.345"})
    set_cells(deliveries, 4, {"quantity": ""})
    columnar, row, refused = both_refusing(files)
    try:
        assert [r.split(":")[0:2] for r in refused] == [
            [orders.name, " line 3"], [deliveries.name, " line 4"]]
        assert columnar.refused == refused
        assert_same(columnar, row)
    finally:
        columnar.close()


@pytest.mark.parametrize(("source", "cells"), [
    ("wallet", {"type": "bogus", "currency": "XXX"}),
    ("wallet", {"type": "", "created_at": "yesterday"}),
    ("wallet", {"currency": "", "created_at": "yesterday"}),
    ("wallet", {"currency": "XXX", "site": ""}),
    ("wallet", {"created_at": "yesterday", "order_id": ""}),
    ("wallet", {"currency": "sgd"}),
    ("acquirer", {"TimeZone": "XYZ", "Creation Date": "yesterday"}),
    ("acquirer", {"Gross Currency": "sgd"}),
    ("acquirer", {"Type": "", "Gross Credit (GC)": "abc"}),
    ("acquirer", {"Merchant Account": "", "Commission (NC)": "abc"}),
    ("acquirer", {"Gross Credit (GC)": "abc", "Exchange Rate": "x"}),
    ("acquirer", {"Gross Credit (GC)": "1.234", "Net Currency": "XXX"}),
])
def test_a_row_with_several_errors_is_refused_naming_the_one_the_row_reader_names(
        tmp_path, source, cells):
    """The row reader reads a row's fields in its own order and names the first that breaks
    a rule: the columnar path names the same one, in the same words (not the first of its
    own checks)."""
    files = generate(tmp_path, 50)["files"]
    bad = tmp_path / f"{source}_bad.csv"
    lines = files[source][0].read_text(encoding="utf-8").splitlines()
    bad.write_text("\n".join(lines[:4]) + "\n", encoding="utf-8")
    set_cells(bad, 3, cells)
    files[source].append(bad)
    columnar = reconcile_columnar(load_rules(), DAY, orders=files["orders"],
                                  deliveries=files["deliveries"], acquirer=files["acquirer"],
                                  wallet=files["wallet"])
    [error] = [o.error for o in read_sources([bad]).rejected]
    assert error.startswith(f"{bad.name}: line 3: ")
    assert columnar.refused == [error]
    assert columnar.orders == 50


@pytest.mark.parametrize("spelling", ["adjustment_credİt", "paymentİ", "ADJUSTMENT_DEBİT",
                                      "refund\u0307"])
def test_a_wallet_type_lower_takes_and_casefold_does_not_is_refused(tmp_path, spelling):
    """DuckDB's ``lower`` maps 'İ' to 'i' (one character), where ``str.casefold``, which the
    row reader compares with, makes it 'i̇' (two): a type so spelt is no type of the row
    reader's, and its file is refused as the row reader refuses it."""
    files = generate(tmp_path, 50)["files"]
    wallet_row(files, "sg1", "WBI1", spelling, "O000000001", "1.00", "SWI")
    columnar = reconcile_columnar(load_rules(), DAY, orders=files["orders"],
                                  deliveries=files["deliveries"], acquirer=files["acquirer"],
                                  wallet=files["wallet"])
    [error] = [o.error for o in read_sources(files["wallet"]).rejected]
    assert error.endswith("[enum]") and repr(spelling) in error
    assert columnar.refused == [error]


@pytest.mark.parametrize("spelling", ["adju\u017ftment_credit", "adju\ufb06ment_debit",
                                      "ADJU\ufb05MENT_CREDIT", "Adjustment_Credit", "PAYOUT"])
def test_a_wallet_type_casefold_takes_is_read_or_left_to_the_row_engine(tmp_path, spelling):
    """``str.casefold`` makes the long s (U+017F) an 's' and the ligatures U+FB05, U+FB06 an
    'st' (``lower`` leaves them): the row reader reads such a type. The columnar path gives
    the row engine's whole result for a type in ASCII, and leaves a day with one in any
    other spelling to the row engine, naming the file, line and column."""
    files = generate(tmp_path, 50)["files"]
    wallet_row(files, "sg1", "WBC1", spelling, "", "1.00", "SWC")
    line = len(files["wallet"][0].read_text(encoding="utf-8").splitlines())
    assert not read_sources(files["wallet"]).rejected
    if spelling.isascii():
        assert_read_alike(files)
        return
    with pytest.raises(ColumnarUnsupported) as caught:
        reconcile_columnar(load_rules(), DAY, orders=files["orders"],
                           deliveries=files["deliveries"], acquirer=files["acquirer"],
                           wallet=files["wallet"], keep=True)
    assert str(caught.value).startswith(
        f"{files['wallet'][0].name}: line {line}: type: {spelling!r} ")


@pytest.mark.parametrize("source", ["acquirer", "wallet"])
def test_a_reference_the_row_mapping_cuts_at_200_characters_is_left_to_the_row_engine(
        tmp_path, source):
    """The row mapping keeps a trace's references to their first 200 characters, so a
    payment whose reference is longer matches an order whose reference is those 200
    characters (checked here); the columnar path compares whole texts, so a day with such a
    reference is the row engine's (named: file, line, column)."""
    files = generate(tmp_path, 50, jsonl=True)["files"]
    ref = "R" * 200
    if source == "acquirer":
        add_order(tmp_path, files, "sg1", "OLONG1", "30.00", ref=ref)
        card_row(files, "sg1", ref + "X", "NOPE", "30.00")
        column = "Psp Reference"
    else:
        add_order(tmp_path, files, "sg1", "OLONG1", "30.00", method="wallet_balance", ref=ref)
        wallet_row(files, "sg1", ref + "Y", "payment", "NOPE", "30.00", "SWL")
        column = "transaction_id"
    path = files[source][0]
    line = len(path.read_text(encoding="utf-8").splitlines())
    row, refused = rows_only(files)
    assert refused == []
    assert any(g.order_id == "OLONG1" and g.kind.value == "one_to_one" for g in row.groups)
    with pytest.raises(ColumnarUnsupported) as caught:
        reconcile_columnar(load_rules(), DAY, orders=files["orders"],
                           deliveries=files["deliveries"], acquirer=files["acquirer"],
                           wallet=files["wallet"], keep=True, site_zones=ZONES)
    assert str(caught.value) == (f"{path.name}: line {line}: {column}: 201 characters, more "
                                 "than the 200 the row engine keeps of a reference")


@pytest.mark.parametrize("source", ["acquirer", "wallet"])
def test_a_reference_of_200_characters_is_read_whole(tmp_path, source):
    """A reference of 200 characters (and one of 200 characters in a script of several
    bytes a character) is kept whole by the row mapping: the same result."""
    files = generate(tmp_path, 50, jsonl=True)["files"]
    for n, ref in enumerate(("R" * 200, "é" * 200)):
        if source == "acquirer":
            add_order(tmp_path, files, "sg1", f"OLONG{n}", "30.00", ref=ref)
            card_row(files, "sg1", ref, "NOPE", "30.00")
        else:
            add_order(tmp_path, files, "sg1", f"OLONG{n}", "30.00", method="wallet_balance",
                      ref=ref)
            wallet_row(files, "sg1", ref, "payment", "NOPE", "30.00", "SWL")
    row = assert_read_alike(files)
    assert {g.order_id for g in row.groups} >= {"OLONG0", "OLONG1"}


@pytest.mark.parametrize("quantity", ["+1", "1_0", "1.0", "01", " 2\u00a0"])
def test_a_delivery_quantity_both_take_alike_is_read_as_the_row_engine_reads_it(
        tmp_path, quantity):
    """pydantic takes '+1', '1_0', '1.0' as whole numbers, as DuckDB's cast does: the
    columnar path reads them as the row engine does (where it flags '1.5', which the cast
    takes as 2)."""
    files = generate(tmp_path, 50)["files"]
    set_cells(files["deliveries"][0], 4, {"quantity": quantity})
    assert_read_alike(files)


def with_optional(path: Path, cells: dict[int, dict[str, str]]) -> None:
    """The delivery export with its optional columns (``kind``, ``delivered_at``), filled
    as a site writes them, and the cells of ``cells`` (by line) set."""
    rows = list(csv.reader(path.read_text(encoding="utf-8").splitlines()))
    rows[0] += ["kind", "delivered_at"]
    for row in rows[1:]:
        row += ["codes", f"{DAY}T10:00:00+08:00"]
    for line, values in cells.items():
        for column, value in values.items():
            rows[line - 1][rows[0].index(column)] = value
    with path.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, lineterminator="\n").writerows(rows)


@pytest.mark.parametrize(("column", "value"), [
    ("kind", "parcel"), ("kind", "Codes"), ("kind", "codes "), ("kind", "codes\u00a0x"),
    ("delivered_at", "2026-11-20T10:00:00"), ("delivered_at", "yesterday"),
    ("delivered_at", "2026-11-20"), ("delivered_at", "2026-13-20T10:00:00+08:00"),
])
def test_a_delivery_exports_optional_column_the_row_engine_refuses_is_refused_alike(
        tmp_path, column, value):
    """A delivery's kind and time, when the export has them, are the canonical delivery's
    (a kind it knows, an aware time): a file with one it refuses is refused by the columnar
    path in the row engine's words (``codes `` is stripped and read, as the row reader
    strips it)."""
    files = generate(tmp_path, 50)["files"]
    part = split_off(files, "deliveries")
    with_optional(part, {3: {column: value}})
    with_optional(files["deliveries"][1], {})
    columnar, row, refused = both_refusing(files)
    try:
        assert columnar.refused == refused
        assert_same(columnar, row)
        if value != "codes ":
            assert len(refused) == 1 and refused[0].startswith(f"{part.name}: line 3: ")
    finally:
        columnar.close()


@pytest.mark.parametrize("delivered", ["", f"{DAY}T10:00:00Z", f"{DAY} 10:00:00+08:00",
                                       f"{DAY}T10:00:00.25+0800"])
def test_a_delivery_exports_optional_columns_the_row_engine_takes_are_read_alike(
        tmp_path, delivered):
    """Kinds and times the canonical delivery takes (an empty kind is ``codes``, an empty
    time the day's start): the day is read, with the row engine's whole result."""
    files = generate(tmp_path, 50)["files"]
    with_optional(files["deliveries"][0], {3: {"kind": "shipment", "delivered_at": delivered},
                                           4: {"kind": " "}})
    assert_read_alike(files)
