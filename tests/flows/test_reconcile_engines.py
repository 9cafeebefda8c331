"""The two engines of reconcile-day: the sites' CSV exports read by the row engine as their
canonical JSON lines are; which engine a day goes to, and why."""

from __future__ import annotations

import csv
from decimal import Decimal
from pathlib import Path

import pytest

from bench.reconcile import DAY, generate
from flows.reconcile import DayView, load_rules, plan_engine, read_sources
from mappings.reconcile import DayInput, reconcile
from tests.connectors.payments.expected import BANK
from tests.flows.conftest import BOTH_DATABASES

ZONES = {"sg1": "Asia/Singapore", "my1": "Asia/Kuala_Lumpur"}


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("engines")
    data = generate(folder, 1000, jsonl=True)
    data["folder"] = folder
    return data


def _result(payments, orders, deliveries):
    sources = read_sources(payments, orders, deliveries, day=DAY)
    assert not sources.rejected, [o.error for o in sources.rejected]
    return reconcile(load_rules(), DayInput(
        day=DAY, orders=sources.orders, traces=sources.traces, deliveries=sources.deliveries,
        payouts=sources.payouts, site_zones=ZONES))


def test_the_csv_exports_give_the_row_engine_the_same_day_as_the_json_lines(day):
    files, folder = day["files"], day["folder"]
    payments = [*files["acquirer"], *files["wallet"]]
    from_csv = _result(payments, files["orders"], files["deliveries"])
    from_json = _result(payments, [folder / "orders.jsonl"], [folder / "deliveries.jsonl"])
    assert len(from_csv.outcomes) == 1000
    assert from_csv.discrepancies == from_json.discrepancies
    assert from_csv.groups == from_json.groups
    assert from_csv.outcomes == from_json.outcomes
    assert sum(from_csv.counts()[f"discrepancy:{c}"] for c in (
        "unpaid_order", "amount_mismatch", "duplicate_payment", "paid_not_delivered")) > 0


def _with_cell(source: Path, target: Path, line: int, column: str, value: str) -> Path:
    with source.open(newline="") as fh:
        rows = list(csv.reader(fh))
    rows[line - 1][rows[0].index(column)] = value
    with target.open("w", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows(rows)
    return target


@pytest.mark.parametrize(("column", "value", "expected"), [
    ("total", "12.345", "line 7: total: 12.345 has more decimals than MYR allows (2) "
     "[amount_decimals]"),
    # what the canonical model alone would take: an exponent, a separator, a sign
    ("total", "1E2", "line 7: total: '1E2' is not a decimal amount [amount_format]"),
    ("total", "1_0.00", "line 7: total: '1_0.00' is not a decimal amount [amount_format]"),
    ("total", "-5.00", "line 7: total: '-5.00' is negative; this column takes magnitudes "
     "[amount_sign]"),
    ("currency", "XXQ", "line 7: currency: 'XXQ' is not an ISO 4217 currency "
     "[currency_unknown]"),
    ("status", "lost", "line 7: status:"),
    ("created_at", "yesterday", "line 7: created_at: 'yesterday' is not a date and time "
     "[datetime_format]"),
    ("created_at", "2026-11-20T10:00:00", "line 7: created_at: '2026-11-20T10:00:00' has no "
     "UTC offset [datetime_naive]"),
])
def test_a_bad_cell_of_the_orders_export_refuses_that_file_naming_line_and_field(
        day, tmp_path, column, value, expected):
    files = day["files"]
    bad = _with_cell(files["orders"][0], tmp_path / "orders_bad.csv", 7, column, value)
    sources = read_sources([], [bad, day["folder"] / "orders.jsonl"], files["deliveries"],
                           day=DAY)
    [refused] = sources.rejected
    assert refused.file == "orders_bad.csv" and expected in refused.error, refused.error
    assert refused.error.endswith("]")  # the rule broken
    assert len(sources.orders) == 1000  # the other file of orders is read
    assert len(sources.deliveries) > 950


def test_an_export_missing_a_column_or_with_a_short_row_is_refused(day, tmp_path):
    files = day["files"]
    lines = files["deliveries"][0].read_text().splitlines()
    short = tmp_path / "deliveries_short.csv"
    short.write_text("\n".join([lines[0], lines[1], "sg1,O000000002", *lines[3:]]) + "\n")
    headless = tmp_path / "orders_no_total.csv"
    with files["orders"][0].open(newline="") as fh:
        rows = [[c for i, c in enumerate(r) if i != 5] for r in csv.reader(fh)]
    with headless.open("w", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows(rows)
    sources = read_sources([], [headless], [short], day=DAY)
    errors = {o.file: o.error for o in sources.rejected}
    assert errors == {
        "orders_no_total.csv": "orders_no_total.csv: line 1: missing column 'total' "
                               "[missing_column]",
        "deliveries_short.csv": "deliveries_short.csv: line 3: 2 fields where the header has "
                                "4 [field_count]"}


def test_a_large_day_of_exports_goes_to_the_columnar_engine_and_a_small_one_to_rows(
        day, monkeypatch):
    files = day["files"]
    payments = [*files["acquirer"], *files["wallet"]]
    monkeypatch.setenv("VOUCHFLOW_RECONCILE_COLUMNAR_MIN_ORDERS", "1000")
    plan = plan_engine("auto", payments, files["orders"], files["deliveries"])
    assert (plan.engine, plan.reason) == ("columns", "1000 order(s), at least 1000")
    assert plan.payments == {"acquirer": files["acquirer"], "wallet": files["wallet"]}
    monkeypatch.setenv("VOUCHFLOW_RECONCILE_COLUMNAR_MIN_ORDERS", "1001")
    plan = plan_engine("auto", payments, files["orders"], files["deliveries"])
    assert (plan.engine, plan.reason) == ("rows", "1000 order(s), under 1001")
    assert plan_engine("columns", payments, files["orders"], files["deliveries"]).engine \
        == "columns"
    assert plan_engine("rows", payments, files["orders"], files["deliveries"]).engine == "rows"


def test_a_day_the_columnar_engine_cannot_read_goes_to_rows_with_the_reason(day, tmp_path):
    files = day["files"]
    camt = next(p for p in sorted((BANK / "camt").rglob("*.xml")) if "053" in p.name)
    plan = plan_engine("columns", [*files["acquirer"], camt], files["orders"],
                       files["deliveries"])
    assert plan.engine == "rows" and plan.reason.startswith(f"{camt.name} is camt")
    plan = plan_engine("columns", files["acquirer"], [day["folder"] / "orders.jsonl"],
                       files["deliveries"])
    assert (plan.engine, plan.reason) == ("rows", "orders.jsonl is not a CSV export")
    unknown = tmp_path / "notes.csv"
    unknown.write_text("a,b\n1,2\n")
    plan = plan_engine("columns", [*files["acquirer"], unknown], files["orders"],
                       files["deliveries"])
    assert plan.engine == "columns"
    [refused] = plan.refused
    assert refused.file == "notes.csv" and "[format_unknown]" in (refused.error or "")
    with pytest.raises(ValueError, match="engine 'fast'"):
        plan_engine("fast", [], [], [])


def _stored(engine) -> dict[str, list[tuple]]:
    """What a day's match left in the state database, ids left out."""
    from sqlalchemy import text

    queries = {
        "groups": "SELECT group_id, kind, site, method, order_id, payout_id, trace_ids, "
                  "currency, expected, received, fee, rule FROM recon_group ORDER BY group_id",
        "discrepancies": "SELECT key, category, status, site, method, order_id, payout_id, "
                         "trace_ids, currency, expected, actual, difference, detail "
                         "FROM recon_discrepancy ORDER BY key",
        "outcomes": "SELECT site, order_id, method, currency, expected, received, fee, "
                    "refunded, reference, matched FROM recon_outcome ORDER BY site, order_id",
        "batches": "SELECT batch_id, version, status, currency, gross, fees, net, count, lines "
                   "FROM remittance_batch ORDER BY batch_id, version",
        "events": "SELECT type, event_id FROM outbound_event ORDER BY seq",
        "dead_letters": "SELECT entity_key, reason FROM dead_letter ORDER BY entity_key",
    }
    with engine.connect() as conn:
        return {name: [tuple(r) for r in conn.execute(text(sql))]
                for name, sql in queries.items()}


def _with_edges(day: dict, folder: Path) -> dict:
    """The day's files and four more orders: one 20 days old (outside the window the flow
    matches) refunded today, one of yesterday paid today (inside it), one of tomorrow, and
    one paid from a wallet by a payment that names another order but carries this one's id
    as its customer reference (the fourth reference rule)."""
    import shutil

    folder.mkdir()
    files = {kind: [Path(shutil.copy(p, folder / p.name)) for p in paths]
             for kind, paths in day["files"].items()}
    with files["orders"][0].open("a") as fh:
        for oid, when in (("OLD1", "2026-10-31T10:00:00+08:00"),
                          ("YDAY1", "2026-11-19T10:00:00+08:00"),
                          ("NEXT1", "2026-11-21T10:00:00+08:00")):
            fh.write(f"sg1,{oid},confirmed,{when},SGD,20.00,card,PSP{oid}\n")
        fh.write("sg1,CREF1,confirmed,2026-11-20T10:00:00+08:00,SGD,15.00,wallet_balance,"
                 "WBCREF1-AT-SITE\n")
    with files["deliveries"][0].open("a") as fh:
        fh.write("sg1,CREF1,delivered,1\n")
    with files["wallet"][0].open("a") as fh:
        fh.write("sg1,WCREF1,payment,NOT-AN-ORDER,2026-11-20T12:00:00+08:00,SGD,15.00,SEDGE,"
                 "CREF1\n")
    with files["acquirer"][0].open("a") as fh:
        fh.write("VouchCo,VouchCoSG1,PSPOLD1,OLD1,visa,2026-11-20 12:00:00,SGT,Refunded,"
                 "REFOLD1,SGD,20.00,,1,SGD,20.00,,,,,,visacredit,EDGE\n")
        fh.write("VouchCo,VouchCoSG1,PSPYDAY1,YDAY1,visa,2026-11-20 12:00:00,SGT,Settled,,"
                 "SGD,,20.00,1,SGD,,19.60,0.40,,,,visacredit,EDGE\n")
    return files


@pytest.mark.parametrize("engine", BOTH_DATABASES, indirect=True)
@pytest.mark.parametrize("edges", [False, True], ids=["generated", "window-edges"])
def test_both_engines_store_the_same_day_and_a_rerun_replaces_it(engine, day, edges,
                                                                 tmp_path):
    """The columnar engine's day, stored in chunks, is the row engine's day row for row:
    groups, discrepancies, outcomes, remittance batches. Matched by rows first, then by
    columns, then by columns again, the day announces its discrepancies once and ends as
    the row engine left it."""
    from flows.reconcile import match_day, match_day_columnar

    files = _with_edges(day, tmp_path / "edges") if edges else day["files"]
    payments = [*files["acquirer"], *files["wallet"]]
    rules = load_rules()
    sources = read_sources(payments, files["orders"], files["deliveries"], day=DAY)
    match_day(engine, DAY, sources, rules, key="rows", zones=ZONES)
    by_rows = _stored(engine)
    if edges:  # the old order's refund names no order of the window; yesterday's is paid,
        # and so is the order its customer reference names
        orphans = [d for d in by_rows["discrepancies"] if d[1] == "payment_without_order"]
        assert any("PSPOLD1" in d[-1] for d in orphans), orphans[:3]
        assert not any(d[5] in {"YDAY1", "CREF1"} for d in by_rows["discrepancies"])
        [cref] = [o for o in by_rows["outcomes"] if o[1] == "CREF1"]
        assert cref[2:4] == ("wallet_balance", "SGD") and cref[9]
        assert Decimal(cref[4]) == Decimal(cref[5]) == Decimal("15.00")
    orders = 1001 if edges else 1000  # of the day
    assert len(by_rows["outcomes"]) == orders and len(by_rows["events"]) > 20
    assert len(by_rows["groups"]) > 1000 and by_rows["batches"]
    plan = plan_engine("columns", payments, files["orders"], files["deliveries"])
    for key in ("columns", "columns-again"):
        view = match_day_columnar(engine, DAY, plan, rules, order_files=files["orders"],
                                  delivery_files=files["deliveries"], key=key,
                                  zones=ZONES)
        assert not isinstance(view, str), view
        assert view.engine == "columns" and view.orders == orders and not view.rejected
        assert view.totals == DayView.of(reconcile(rules, DayInput(
            day=DAY, orders=sources.orders, traces=sources.traces,
            deliveries=sources.deliveries, payouts=sources.payouts, site_zones=ZONES)),
            sources).totals
        stored = _stored(engine)
        for name in by_rows:
            assert stored[name] == by_rows[name], name


def test_the_flow_sends_a_large_day_to_columns_and_says_so(
        day, engine, state_url, prefect_harness, monkeypatch, tmp_path):
    """reconcile-day end to end: ``auto`` takes the columnar engine for a day at the
    threshold, its summary and artifacts say which engine and why, and the classes are the
    ground truth's."""
    import asyncio
    from collections import Counter

    from flows.reconcile import reconcile_day

    monkeypatch.setenv("VOUCHFLOW_HOME", str(tmp_path))
    monkeypatch.setenv("VOUCHFLOW_RECONCILE_COLUMNAR_MIN_ORDERS", "1000")
    files = day["files"]
    payments = [str(p) for p in [*files["acquirer"], *files["wallet"]]]
    summary = asyncio.run(reconcile_day(DAY, payments, [str(p) for p in files["orders"]],
                                        [str(p) for p in files["deliveries"]]))
    assert summary["engine"] == "columns"
    assert summary["engine_reason"] == "1000 order(s), at least 1000"
    truth = Counter(c for classes in day["truth"].values() for c in classes)
    assert summary["by_class"] == dict(truth)
    assert summary["orders"] == 1000 and summary["rejected"] == 0
    assert {s["kind"] for s in summary["sources"]} == {"orders", "deliveries", "payments"}
    assert Path(summary["csv"]).read_text().count("\n") == sum(truth.values()) + 1
    assert len(_stored(engine)["outcomes"]) == 1000


def test_a_day_that_needs_currency_conversion_is_left_to_the_row_engine(engine, day, tmp_path):
    """A payment in USD for an order in SGD: the row engine converts it at the rules' rate
    and the order is paid; the columnar engine cannot, so it stores nothing and says why,
    and the flow's fallback (the row engine) gives the paid order."""
    from flows.reconcile import match_day, match_day_columnar

    files = _with_edges(day, tmp_path / "usd")
    with files["orders"][0].open("a") as fh:
        fh.write("sg1,OUSD1,confirmed,2026-11-20T10:00:00+08:00,SGD,13.50,card,PSPOUSD1\n")
    with files["deliveries"][0].open("a") as fh:
        fh.write("sg1,OUSD1,delivered,1\n")
    with files["acquirer"][0].open("a") as fh:
        fh.write("VouchCo,VouchCoSG1,PSPOUSD1,OUSD1,visa,2026-11-20 12:00:00,SGT,Settled,,"
                 "USD,,10.00,1,USD,,10.00,,,,,visacredit,EDGE\n")
    payments = [*files["acquirer"], *files["wallet"]]
    rules = load_rules()
    plan = plan_engine("columns", payments, files["orders"], files["deliveries"])
    reason = match_day_columnar(engine, DAY, plan, rules, order_files=files["orders"],
                                delivery_files=files["deliveries"], key="c", zones=ZONES)
    assert reason == ("a payment names an order in another currency by its "
                      "provider_reference->provider_reference (currency conversion is the "
                      "row engine's)")
    assert _stored(engine)["outcomes"] == []
    sources = read_sources(payments, files["orders"], files["deliveries"], day=DAY)
    result = match_day(engine, DAY, sources, rules, key="rows", zones=ZONES)
    [usd] = [o for o in result.outcomes if o.order_id == "OUSD1"]
    assert usd.matched and usd.received == Decimal("13.50")


def test_a_file_delimited_otherwise_than_by_commas_goes_to_rows(day, tmp_path):
    files = day["files"]
    semicolons = tmp_path / files["wallet"][0].name
    with files["wallet"][0].open(newline="") as src, semicolons.open("w", newline="") as out:
        csv.writer(out, delimiter=";", lineterminator="\n").writerows(csv.reader(src))
    for payments, orders in (([*files["acquirer"], semicolons], files["orders"]),
                             (files["acquirer"], [semicolons])):
        plan = plan_engine("auto", payments, orders, files["deliveries"])
        assert (plan.engine, plan.reason) == (
            "rows", f"{semicolons.name} is delimited by ';', which only the row engine reads")
    sources = read_sources([*files["acquirer"], semicolons], files["orders"],
                           files["deliveries"], day=DAY)
    assert not sources.rejected and len(sources.traces) > 1000


ACQUIRER_ROWS = {
    # a chargeback of a paid order, reversed: the row engine groups it with the chargebacks
    "reversal": "VouchCo,VouchCoSG1,PSP000000000,O000000000,visa,2026-11-20 12:00:00,SGT,"
                "ChargebackReversed,CBR1,SGD,,5.00,1,SGD,,5.00,,,,,visacredit,EDGE",
    # a trace's time in a named zone, which the row reader takes
    "named zone": "VouchCo,VouchCoSG1,PSPZONE1,ZONE1,visa,2026-11-20 12:00:00,Asia/Singapore,"
                  "Settled,,SGD,,20.00,1,SGD,,19.60,0.40,,,,visacredit,EDGE",
}


@pytest.mark.parametrize(("case", "reason"), [
    ("reversal", "1 RefundedReversed or ChargebackReversed row(s) (reversals are the row "
                 "engine's)"),
    ("named zone", "acquirer_20261120.csv: line 739: 'Asia/Singapore' is a named time zone "
                   "(the row engine reads those)"),
    ("read twice", "1 trace(s) read twice (the row engine counts each once)"),
])
def test_a_day_the_columnar_engine_would_read_otherwise_is_left_to_the_row_engine(
        engine, day, tmp_path, case, reason):
    """What the columnar engine does not read as the row engine does is found once its files
    are read: nothing is stored, the reason is given, and the flow matches the day by rows."""
    from flows.reconcile import match_day_columnar

    files = _with_edges(day, tmp_path / "day")
    acquirer = files["acquirer"][0]
    lines = acquirer.read_text().splitlines()
    added = lines[1] if case == "read twice" else ACQUIRER_ROWS[case]
    acquirer.write_text("\n".join([*lines, added]) + "\n")
    payments = [*files["acquirer"], *files["wallet"]]
    plan = plan_engine("columns", payments, files["orders"], files["deliveries"])
    got = match_day_columnar(engine, DAY, plan, load_rules(), order_files=files["orders"],
                             delivery_files=files["deliveries"], key="c", zones=ZONES)
    assert got == reason
    assert _stored(engine)["outcomes"] == []
    sources = read_sources(payments, files["orders"], files["deliveries"], day=DAY)
    assert not sources.rejected, [o.error for o in sources.rejected]
    result = reconcile(load_rules(), DayInput(
        day=DAY, orders=sources.orders, traces=sources.traces, deliveries=sources.deliveries,
        payouts=sources.payouts, site_zones=ZONES))
    if case == "read twice":
        assert result.superseded == 1
    elif case == "reversal":
        assert any(g.kind.value == "chargeback" and g.order_id == "O000000000"
                   for g in result.groups)


def test_a_delivery_file_with_a_long_name_is_read_and_its_rows_name_it_stably(day, tmp_path):
    """A delivery's ``source`` names its file, and the canonical delivery takes a source of
    at most 100 characters: a file's name (here 150 characters) does not make its rows
    invalid. The source stays within the limit, the same on every read, and names the file
    apart from another of the same beginning."""
    files = day["files"]
    names = [f"deliveries_{'x' * 120}_{n}_20261120.csv" for n in (1, 2)]
    paths = [tmp_path / name for name in names]
    for path in paths:
        path.write_bytes(files["deliveries"][0].read_bytes())
    sources = [read_sources([], [], [path], day=DAY) for path in paths]
    assert [s.rejected for s in sources] == [[], []]
    first, second = (s.deliveries for s in sources)
    assert len(first) == len(second) > 900
    assert {len(d.source) for d in first} <= set(range(1, 101))
    assert first[0].source.startswith("export:deliveries_")
    assert len({d.source for d in first}) == 1
    assert first[0].source != second[0].source
    assert read_sources([], [], [paths[0]], day=DAY).deliveries[0].source == first[0].source
    # a short name is kept whole, as before
    short = read_sources([], [], files["deliveries"], day=DAY).deliveries[0]
    assert short.source == f"export:{files['deliveries'][0].name}"
