"""``vouchflow payments parse`` and ``ingest`` from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from tests.connectors.payments.expected import CAMT, MT940
from tests.connectors.payments.samples import acquirer_file

needs_corpus = pytest.mark.skipif(not CAMT.is_dir(), reason="no shared bank statements")


def _run(*args: str):
    return CliRunner().invoke(app, ["payments", *args])


@needs_corpus
def test_parse_prints_one_json_line_per_trace() -> None:
    result = _run("parse", str(CAMT / "camt053.v8.xml"))
    assert result.exit_code == 0, result.stderr
    (line,) = [json.loads(x) for x in result.stdout.splitlines()]
    assert line["record"] == "trace" and line["source"] == "camt053"
    assert line["amount"] == "8.85" and line["currency"] == "EUR"
    assert line["direction"] == "credit" and line["status"] == "booked"
    assert line["booking_date"] == "2014-12-31" and line["value_date"] == "2015-01-02"
    assert line["booked_at"] == "2014-12-31T12:15:00Z"
    assert line["references"]["account_servicer_reference"] == "AAAASESS-FP-CN_98765/01"
    assert line["references"]["end_to_end_id"] == "MUELL/FINP/RA12345"
    assert line["counterparty"]["name"] == "NAME NAME"
    assert line["origin"].startswith("camt053.v8.xml:")


@needs_corpus
def test_parse_reads_mt940_with_an_explicit_format() -> None:
    result = _run("parse", str(MT940 / "jejik" / "generic.sta"), "--format", "mt940")
    assert result.exit_code == 0, result.stderr
    lines = [json.loads(x) for x in result.stdout.splitlines()]
    assert [(x["amount"], x["direction"], x["booking_date"]) for x in lines] == [
        ("10.00", "debit", "2011-01-01"), ("10.00", "debit", "2011-02-01")]


@needs_corpus
@pytest.mark.parametrize(("args", "fragment"), [
    ([str(CAMT / "camt053.v2.wrong.xml")], "camt053.v2.wrong.xml: line 3"),
    ([str(CAMT / "camt052.v2.xml"), "--format", "camt053"], "[format_mismatch]"),
    (["/nonexistent/bank.xml"], "no such file"),
    ([str(CAMT / "camt053.v8.xml"), "--format", "toaster"], "unknown format 'toaster'"),
])
def test_an_unreadable_file_gets_one_error_line_and_a_non_zero_exit(
    args: list[str], fragment: str,
) -> None:
    result = _run("parse", *args)
    assert result.exit_code == 1
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: ") and fragment in line


def test_parse_can_show_fees_and_payouts(tmp_path: Path) -> None:
    path = acquirer_file(tmp_path / "report.csv")
    result = _run("parse", str(path), "--records", "all")
    assert result.exit_code == 0, result.stderr
    kinds = [json.loads(x)["record"] for x in result.stdout.splitlines()]
    assert kinds.count("trace") == 3 and kinds.count("fee") == 5 and kinds.count("payout") == 1
    alias = _run("parse", str(path), "--format", "adyen")
    assert alias.exit_code == 0 and len(alias.stdout.splitlines()) == 3
    only = _run("parse", str(path), "--records", "payout")
    assert [json.loads(x)["amount"] for x in only.stdout.splitlines()] == ["56.90"]


def test_ingest_reads_a_file_once_and_flags_a_changed_one(tmp_path: Path, state_url: str) -> None:
    path = acquirer_file(tmp_path / "settlement_2026-11-20.csv")
    first = _run("ingest", str(path))
    assert first.exit_code == 0, first.stderr
    assert json.loads(first.stdout)["status"] == "read"
    assert json.loads(first.stdout)["traces"] == 3
    again = _run("ingest", str(path))
    assert json.loads(again.stdout)["status"] == "seen" and again.exit_code == 0
    path.write_text(path.read_text().replace("97.10", "97.20").replace("2.00,", "1.90,"))
    changed = _run("ingest", str(path))
    assert changed.exit_code == 1
    assert json.loads(changed.stdout)["status"] == "changed"
    assert "[changed_file]" in changed.stderr
    accepted = _run("ingest", str(path), "--accept-changed")
    assert json.loads(accepted.stdout)["status"] == "read" and accepted.exit_code == 0
    assert json.loads(_run("ingest", str(path)).stdout)["status"] == "seen"
