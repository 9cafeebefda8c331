"""The reconcile benchmark at a tiny scale: its JSON line, its ground truth met, the columnar
path agreeing entity by entity with the row-by-row engine, and bad files refused by it as the
row readers refuse them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.reconcile import DAY, generate
from flows.reconcile import load_rules
from flows.reconcile_columnar import reconcile_columnar

ROOT = Path(__file__).resolve().parents[2]


def test_reconcile_bench_prints_its_json_line_and_agrees_with_the_row_engine():
    out = subprocess.run([sys.executable, "-m", "bench", "reconcile", "--orders", "1000",
                          "--check"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"bench", "scale", "vouchflow_s", "baseline_s", "ratio", "peak_rss_mb",
            "accuracy", "baseline", "floor_s", "floor_ratio", "floor"} <= set(result)
    assert result["floor_s"] > 0 and result["floor_cpu_s"] > 0
    assert result["bench"] == "reconcile" and result["accuracy"] == 1.0
    assert result["python_agrees"] is True and result["python_accuracy"] == 1.0
    assert result["scale"]["traces"] > 1000 and result["refused"] == []


def test_the_columnar_path_refuses_a_bad_file_and_reads_the_others(tmp_path):
    data = generate(tmp_path, 200)
    files = data["files"]
    bad = tmp_path / "acquirer_bad.csv"
    lines = files["acquirer"][0].read_text().splitlines()
    cells = lines[3].split(",")
    cells[9], cells[11] = "EUR", "100.005"  # gross currency and gross credit
    bad.write_text("\n".join([lines[0], lines[1], lines[2], ",".join(cells)]) + "\n")
    result = reconcile_columnar(load_rules(), DAY, orders=files["orders"],
                                deliveries=files["deliveries"],
                                acquirer=[*files["acquirer"], bad], wallet=files["wallet"])
    assert result.refused == ["acquirer_bad.csv: line 4: Gross Credit (GC): 100.005 has more "
                              "decimals than EUR allows (2) [amount_decimals]"]
    assert result.orders == 200


def test_the_columnar_path_takes_later_reference_rules_and_shared_references_as_the_row_engine(
        tmp_path):
    """A payment found only by its merchant reference (the second rule), and a provider
    reference two orders share (the first site wins): the same classes as the row engine."""
    import csv
    import json

    from bench.reconcile import python_labels

    data = generate(tmp_path, 200, jsonl=True)
    files = data["files"]
    with files["acquirer"][0].open("a", newline="") as fh:  # pays unpaid sg1:O000000000
        csv.writer(fh, lineterminator="\n").writerow(
            ["VouchCo", "VouchCoSG1", "PSPNOREF1", "O000000000", "visa", f"{DAY} 10:00:00",
             "SGT", "Settled", "", "SGD", "", "5.00", "1", "SGD", "", "4.90", "0.10", "", "",
             "", "visacredit", "extra"])
    shared = {"site": "my1", "order_id": "OSHARED1", "created_at": f"{DAY}T10:00:00+08:00",
              "currency": "SGD", "total": "42.00", "ref": "PSP000000100"}
    with files["orders"][0].open("a", newline="") as fh:  # takes sg1:O000000100's payment
        csv.writer(fh, lineterminator="\n").writerow(
            [shared["site"], shared["order_id"], "confirmed", shared["created_at"], "SGD",
             "42.00", "card", shared["ref"]])
    with (tmp_path / "orders.jsonl").open("a") as fh:
        money = {"amount": "42.00", "currency": "SGD"}
        fh.write(json.dumps({
            "site": "my1", "order_id": "OSHARED1", "status": "confirmed",
            "created_at": shared["created_at"], "updated_at": shared["created_at"],
            "currency": "SGD",
            "lines": [{"line_id": "1", "sku": "GIFT", "quantity": 1, "unit_price": money}],
            "payment": {"method": "card", "provider": "p", "provider_reference": shared["ref"],
                        "amount": money}}) + "\n")
    result = reconcile_columnar(load_rules(), DAY, orders=files["orders"],
                                deliveries=files["deliveries"], acquirer=files["acquirer"],
                                wallet=files["wallet"], labels=True)
    assert result.labels["sg1:O000000000"] == ["paid_not_delivered"]
    assert result.labels["sg1:O000000100"] == ["delivered_not_paid"]
    assert result.labels["my1:OSHARED1"] == ["paid_not_delivered"]  # 42.00 is its total
    assert result.labels == python_labels(tmp_path, files)


def test_a_delivery_file_the_reader_cannot_parse_is_refused_and_the_others_count(tmp_path):
    from bench.reconcile import accuracy

    data = generate(tmp_path, 200)
    files = data["files"]
    bad = tmp_path / "deliveries_bad.csv"
    bad.write_text('site,order_id,status,quantity\nsg1,O000000000,delivered,1\n'
                   'sg1,"O000000002,delivered,1\n')
    result = reconcile_columnar(load_rules(), DAY, orders=files["orders"],
                                deliveries=[bad, *files["deliveries"]],
                                acquirer=files["acquirer"], wallet=files["wallet"], labels=True)
    assert len(result.refused) == 1, result.refused
    assert result.refused[0].startswith("deliveries_bad.csv: ")
    assert result.refused[0].endswith("[csv_syntax]")
    # sg1:O000000000 stays undelivered: nothing of the refused file counts
    assert accuracy(data["truth"], result.labels) == 1.0 and result.orders == 200


def refused_with_one_cell_changed(tmp_path, kind: str, column: int, value: str) -> list[str]:
    """A day's files plus a copy of one of them with a cell of its second data row replaced:
    what the columnar path refuses (the day's 200 orders are still read)."""
    return refused_with_cells_changed(tmp_path, kind, {column: value}, replacing=True)

@pytest.mark.parametrize(("kind", "column", "value", "expected"), [
    ("orders", 3, "2026-11-2x", "line 3: created_at: '2026-11-2x' is not a date and time "
                                "[datetime_format]"),
    ("orders", 3, "2026-11-20T25:00:00+08:00", "line 3: created_at: '2026-11-20T25:00:00+08:00' "
                                               "is not a date and time [datetime_format]"),
    ("acquirer", 5, "20/11/2026 10:00", "line 3: Creation Date: '20/11/2026 10:00' is not a "
                                        "date and time [datetime_format]"),
    ("acquirer", 6, "XYZT", "line 3: TimeZone: 'XYZT' is not a time zone [timezone_unknown]"),
    ("wallet", 4, "yesterday", "line 3: created_at: 'yesterday' is not a date and time "
                               "[datetime_format]"),
])
def test_a_file_with_a_bad_date_or_zone_is_refused_naming_line_field_and_rule(
        tmp_path, kind, column, value, expected):
    assert refused_with_one_cell_changed(tmp_path, kind, column, value) == [
        f"{kind}_bad.csv: {expected}"]


@pytest.mark.parametrize(("kind", "column", "value", "expected"), [
    # the text is judged, not a decimal cast of it (which rounds past six places and takes
    # an exponent): the same refusals as connectors.payments.common.parse_amount
    ("wallet", 6, "10.0000001", "line 3: amount: 10.0000001 has more decimals than SGD allows "
                                "(2) [amount_decimals]"),
    ("wallet", 6, "1e-7", "line 3: amount: '1e-7' is not a decimal amount [amount_format]"),
    ("orders", 5, "1E2", "line 3: total: '1E2' is not a decimal amount [amount_format]"),
    ("orders", 5, "-5.00", "line 3: total: '-5.00' is negative; this column takes magnitudes "
                           "[amount_sign]"),
    ("acquirer", 11, "9.550000001", "line 3: Gross Credit (GC): 9.550000001 has more decimals "
                                    "than SGD allows (2) [amount_decimals]"),
    # a currency is read as ISO 4217 or the file is explained
    ("wallet", 5, "XXQ", "line 3: currency: 'XXQ' is not an ISO 4217 currency "
                         "[currency_unknown]"),
    ("acquirer", 13, "XXQ", "line 3: Net Currency: 'XXQ' is not an ISO 4217 currency "
                            "[currency_unknown]"),
])
def test_an_amount_the_row_readers_refuse_is_refused_however_a_cast_would_round_it(
        tmp_path, kind, column, value, expected):
    assert refused_with_one_cell_changed(tmp_path, kind, column, value) == [
        f"{kind}_bad.csv: {expected}"]


def read_cleanly(data: dict):
    """The generated day (``data``, its files perhaps edited) through the columnar path:
    nothing refused, every entity's classes as generated."""
    from bench.reconcile import accuracy

    files = data["files"]
    result = reconcile_columnar(load_rules(), DAY, orders=files["orders"],
                                deliveries=files["deliveries"], acquirer=files["acquirer"],
                                wallet=files["wallet"], labels=True)
    assert result.refused == []
    assert accuracy(data["truth"], result.labels) == 1.0
    return result


def test_zeros_past_the_minor_unit_are_the_same_amount(tmp_path):
    """``18.150000000`` is 18.15: trailing zeros beyond six places are not a refusal."""
    data = generate(tmp_path, 200)
    files = data["files"]
    for kind, column in (("wallet", 6), ("acquirer", 11)):
        lines = files[kind][0].read_text().splitlines()
        cells = lines[2].split(",")
        cells[column] = cells[column] + "0000000"
        lines[2] = ",".join(cells)
        files[kind][0].write_text("\n".join(lines) + "\n")
    read_cleanly(data)


def refused_with_one_line_changed(tmp_path, kind: str, change) -> tuple[list[str], float]:
    """A day's files plus a copy of one of them whose third line (the second data row) is
    changed: what the columnar path refuses, and the accuracy of the day's classes without
    the copy (the good files are all read)."""
    from bench.reconcile import accuracy

    data = generate(tmp_path, 200)
    files = data["files"]
    lines = files[kind][0].read_text().splitlines()
    lines[2] = change(lines[2])
    bad = tmp_path / f"{kind}_bad.csv"
    bad.write_text("\n".join(lines) + "\n")
    inputs = {k: files[k] for k in ("orders", "deliveries", "acquirer", "wallet")}
    inputs[kind] = [bad, *inputs[kind]]
    result = reconcile_columnar(load_rules(), DAY, **inputs, labels=True)
    assert result.orders == 200
    return result.refused, accuracy(data["truth"], result.labels)


@pytest.mark.parametrize("kind", ["orders", "acquirer", "wallet", "deliveries"])
@pytest.mark.parametrize(("change", "expected"), [
    (lambda line: line.replace(",", ',"', 1),
     "line 3: Value with unterminated quote found. [csv_syntax]"),
    (lambda line: line + ",extra", "line 3: {more} fields where the header has {width} "
                                   "[field_count]"),
    (lambda line: line.rsplit(",", 1)[0], "line 3: {fewer} fields where the header has "
                                          "{width} [field_count]"),
], ids=["unterminated_quote", "field_more", "field_fewer"])
def test_a_file_the_csv_reader_cannot_parse_is_refused_at_its_line_and_the_others_count(
        tmp_path, kind, change, expected):
    """Broken CSV syntax in any of the day's files is a refusal naming the file, the line and
    the rule (not an exception that stops the day), and the other files are read as usual."""
    width = {"orders": 8, "acquirer": 22, "wallet": 9, "deliveries": 4}[kind]
    refused, accuracy = refused_with_one_line_changed(tmp_path, kind, change)
    assert refused == [f"{kind}_bad.csv: " + expected.format(
        width=width, more=width + 1, fewer=width - 1)]
    assert accuracy == 1.0


def refused_with_cells_changed(tmp_path, kind: str, cells: dict[int, str], *,
                               replacing: bool = False) -> list[str]:
    """As ``refused_with_one_cell_changed``, for cells that may be empty before or after
    (``replacing``: each must hold a value to replace)."""
    files = generate(tmp_path, 200)["files"]
    lines = files[kind][0].read_text().splitlines()
    row = lines[2].split(",")
    for column, value in cells.items():
        assert row[column] or not replacing, (kind, row)  # a value is there to replace
        row[column] = value
    bad = tmp_path / f"{kind}_bad.csv"
    bad.write_text("\n".join([lines[0], lines[1], ",".join(row), lines[3]]) + "\n")
    inputs = {k: files[k] for k in ("orders", "deliveries", "acquirer", "wallet")}
    inputs[kind] = [*inputs[kind], bad]
    result = reconcile_columnar(load_rules(), DAY, **inputs)
    assert result.orders == 200
    return result.refused


@pytest.mark.parametrize(("kind", "cells", "expected"), [
    # the rules of the row readers that a typed read alone would let through
    ("wallet", {6: "1_000"}, "line 3: amount: '1_000' is not a decimal amount [amount_format]"),
    ("orders", {5: "1_0.00"}, "line 3: total: '1_0.00' is not a decimal amount "
                              "[amount_format]"),
    ("wallet", {2: "transfer"}, "line 3: type: 'transfer' is not one of payment, refund, "
                                "payout, adjustment_credit, adjustment_debit [enum]"),
    ("wallet", {2: ""}, "line 3: type: empty; a value is required [required]"),
    ("acquirer", {10: "9.55"}, "line 3: Gross Debit (GC): both Gross Debit and Gross Credit "
                               "are filled [debit_and_credit]"),
    ("acquirer", {14: "9.36"}, "line 3: Net Debit (NC): both Net Debit and Net Credit are "
                               "filled [debit_and_credit]"),
    ("acquirer", {11: "", 15: ""}, "line 3: Gross Credit (GC): no gross or net amount "
                                   "[amount_missing]"),
    ("acquirer", {12: "one"}, "line 3: Exchange Rate: 'one' is not a number [amount_format]"),
    ("acquirer", {6: "+25:00"}, "line 3: TimeZone: '+25:00' is not a time zone "
                                "[timezone_unknown]"),
])
def test_a_row_the_row_reader_refuses_whole_is_refused_with_its_rule(tmp_path, kind, cells,
                                                                     expected):
    assert refused_with_cells_changed(tmp_path, kind, cells) == [f"{kind}_bad.csv: {expected}"]


def test_zones_as_offsets_and_wallet_types_in_any_case_read_as_the_row_engine_reads_them(
        tmp_path):
    """``+08:00`` and ``GMT+8`` are time zones, ``PAYMENT`` a wallet payment, for the row
    readers: the columnar path takes them too, and every entity gets the row engine's
    classes."""
    from bench.reconcile import python_labels

    data = generate(tmp_path, 400, jsonl=True)
    files = data["files"]
    for kind, column, values in (("acquirer", 6, ("+08:00", "GMT+8", "+0800")),
                                 ("wallet", 2, ("PAYMENT", " Payment"))):
        lines = files[kind][0].read_text().splitlines()
        for n in range(1, len(lines)):
            cells = lines[n].split(",")
            if kind == "acquirer" or cells[column] == "payment":
                cells[column] = values[n % len(values)]
            lines[n] = ",".join(cells)
        files[kind][0].write_text("\n".join(lines) + "\n")
    result = read_cleanly(data)
    assert result.labels == python_labels(tmp_path, files)


def test_bad_files_of_every_kind_at_once_are_each_refused_in_the_order_given(tmp_path):
    """The orders and the payment files are read side by side: bad files of both, explained
    at the same time, are each refused at their own line, listed in the order the files
    were given (orders, deliveries, card, wallet), and the good files all count."""
    from bench.reconcile import accuracy

    data = generate(tmp_path, 300)
    files = data["files"]
    bad: dict[str, list[Path]] = {}
    for kind, changes in (("orders", [(5, "1E2"), (3, "never")]),
                          ("acquirer", [(11, "9.555"), (6, "XYZT")]),
                          ("wallet", [(6, "-1.00"), (2, "gift")])):
        lines = files[kind][0].read_text().splitlines()
        for n, (column, value) in enumerate(changes):
            cells = lines[2 + n].split(",")
            cells[column] = value
            path = tmp_path / f"{kind}_bad{n}.csv"
            path.write_text("\n".join([*lines[:2 + n], ",".join(cells)]) + "\n")
            bad.setdefault(kind, []).append(path)
    broken = tmp_path / "deliveries_bad.csv"
    broken.write_text("site,order_id,status,quantity\nsg1,O1,delivered,1,1\n")
    result = reconcile_columnar(
        load_rules(), DAY, orders=[*bad["orders"], *files["orders"]],
        deliveries=[*files["deliveries"], broken],
        acquirer=[*bad["acquirer"], *files["acquirer"]],
        wallet=[*files["wallet"], *bad["wallet"]], labels=True)
    assert result.refused == [
        "orders_bad0.csv: line 3: total: '1E2' is not a decimal amount [amount_format]",
        "orders_bad1.csv: line 4: created_at: 'never' is not a date and time "
        "[datetime_format]",
        "deliveries_bad.csv: line 2: 5 fields where the header has 4 [field_count]",
        "acquirer_bad0.csv: line 3: Gross Credit (GC): 9.555 has more decimals than SGD "
        "allows (2) [amount_decimals]",
        "acquirer_bad1.csv: line 4: TimeZone: 'XYZT' is not a time zone [timezone_unknown]",
        "wallet_bad0.csv: line 3: amount: '-1.00' is negative; this column takes magnitudes "
        "[amount_sign]",
        "wallet_bad1.csv: line 4: type: 'gift' is not one of payment, refund, payout, "
        "adjustment_credit, adjustment_debit [enum]",
    ]
    assert result.orders == 300 and accuracy(data["truth"], result.labels) == 1.0
