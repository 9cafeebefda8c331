"""Malformed inputs are refused with a message naming the file, the line and the field, and
one bad file does not stop the others."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors.payments.camt import CamtReader
from connectors.payments.common import PaymentFileError
from flows.payments import ingest_payment_files, read_payment_file
from state.db import session_scope
from state.store import list_dead_letters
from tests.connectors.payments.expected import CAMT
from tests.connectors.payments.samples import ACQUIRER_ROWS, acquirer_file

MINIMAL = CAMT / "camt053.v2.minimal.xml"
needs_corpus = pytest.mark.skipif(not MINIMAL.exists(), reason="no shared camt samples")


def _refused(path: Path, fmt: str = "auto") -> PaymentFileError:
    with pytest.raises(PaymentFileError) as info:
        list(read_payment_file(path, fmt))
    return info.value


@needs_corpus
def test_a_truncated_camt_file_is_refused_with_its_line(tmp_path: Path) -> None:
    text = MINIMAL.read_bytes()
    path = tmp_path / "bank_2026-11-20.xml"
    path.write_bytes(text[: len(text) * 2 // 3])
    error = _refused(path)
    assert error.rule == "xml_syntax"
    assert error.line is not None and error.line > 100
    assert "bank_2026-11-20.xml" in str(error) and "truncated" in str(error)


def _with_entity(secret: Path, padding: str = "") -> bytes:
    text = MINIMAL.read_text()
    declaration = (f'<?xml version="1.0" encoding="UTF-8"?>\n{padding}'
                   f'<!DOCTYPE Document [<!ENTITY xxe SYSTEM "file://{secret}">]>\n')
    body = text.split("?>", 1)[1].replace("<MsgId>CAMT053RIB000000000001</MsgId>",
                                         "<MsgId>&xxe;</MsgId>")
    return (declaration + body).encode()


@needs_corpus
def test_an_external_entity_is_refused_and_never_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-VALUE")
    path = tmp_path / "hostile.xml"
    path.write_bytes(_with_entity(secret))
    error = _refused(path, "camt053")
    assert error.rule == "dtd_refused"
    assert "hostile.xml" in str(error) and "TOP-SECRET-VALUE" not in str(error)


@needs_corpus
def test_a_doctype_hidden_past_the_sniffed_head_is_still_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-VALUE")
    path = tmp_path / "hostile-late.xml"
    padding = "<!--" + "x" * 70_000 + "-->\n"
    path.write_bytes(_with_entity(secret, padding))
    error = _refused(path, "camt053")
    assert error.rule == "dtd_refused"
    # the streaming pass refuses it too, without the XSD pass in front of it
    reader = CamtReader(path, validate=False)
    reader.version, reader.message = "camt.053.001.02", "camt.053"
    reader.ns = "urn:iso:std:iso:20022:tech:xsd:camt.053.001.02"
    with pytest.raises(PaymentFileError) as info:
        for entry in reader.entries():
            assert "TOP-SECRET" not in str(entry)
    assert info.value.rule == "dtd_refused"


@needs_corpus
@pytest.mark.parametrize(("amount", "currency", "rule"), [
    ("8.855", "EUR", "amount_decimals"),
    ("8.85", "XYZ", "currency_unknown"),
])
def test_camt_amounts_are_checked_against_their_currency(
    tmp_path: Path, amount: str, currency: str, rule: str,
) -> None:
    text = MINIMAL.read_text().replace('<Amt Ccy="EUR">8.85</Amt>',
                                       f'<Amt Ccy="{currency}">{amount}</Amt>', 1)
    path = tmp_path / "bank.xml"
    path.write_text(text)
    error = _refused(path)
    assert error.rule == rule
    assert error.line is not None and error.field == "Ntry/Amt" + ("/@Ccy" if
                                                                    currency == "XYZ" else "")
    assert "bank.xml" in str(error)


def test_a_csv_with_a_missing_column_is_refused(tmp_path: Path) -> None:
    from connectors.payments.acquirer import COLUMNS

    path = acquirer_file(tmp_path / "settlement_detail_report_batch_42.csv",
                         columns=[c for c in COLUMNS if c != "Batch Number"])
    error = _refused(path, "acquirer")
    assert error.rule == "missing_column" and error.line == 1
    assert "'Batch Number'" in str(error)
    assert "settlement_detail_report_batch_42.csv" in str(error)


@pytest.mark.parametrize(("column", "value", "rule"), [
    ("Gross Credit (GC)", "100.005", "amount_decimals"),
    ("Gross Currency", "XYZ", "currency_unknown"),
    ("Gross Credit (GC)", "1e3", "amount_format"),
    ("Creation Date", "yesterday", "datetime_format"),
])
def test_a_bad_csv_field_names_the_row_and_the_column(
    tmp_path: Path, column: str, value: str, rule: str,
) -> None:
    rows = [dict(r) for r in ACQUIRER_ROWS]
    rows[1][column] = value
    rows[1]["Gross Currency"] = rows[1]["Net Currency"] = "EUR" if column != "Gross Currency" \
        else value
    path = acquirer_file(tmp_path / "report.csv", rows)
    error = _refused(path)
    assert error.rule == rule
    assert error.line == 3 and error.field == column
    assert str(error).startswith(f"report.csv: line 3: {column}: ")


def test_money_read_from_files_is_never_a_float(tmp_path: Path) -> None:
    path = acquirer_file(tmp_path / "report.csv")
    for record in read_payment_file(path, "acquirer", account=None):
        for value in record.model_dump().values():
            assert not isinstance(value, float)


@needs_corpus
def test_bad_files_do_not_stop_the_others(tmp_path: Path, engine) -> None:
    good = acquirer_file(tmp_path / "good.csv")
    truncated = tmp_path / "truncated.xml"
    truncated.write_bytes(MINIMAL.read_bytes()[:1500])
    missing = acquirer_file(tmp_path / "missing.csv",
                            columns=[c for c in ACQUIRER_ROWS[0] if c != "Psp Reference"])
    rows = [dict(r) for r in ACQUIRER_ROWS]
    rows[0]["Gross Credit (GC)"] = "100.005"
    decimals = acquirer_file(tmp_path / "decimals.csv", rows)
    statement = tmp_path / "statement.xml"
    statement.write_bytes(MINIMAL.read_bytes())
    outcomes = ingest_payment_files([truncated, missing, good, decimals, statement], engine)
    assert [o.status for o in outcomes] == ["rejected", "rejected", "read", "rejected", "read"]
    assert outcomes[2].counts() == {"traces": 3, "payouts": 1, "fees": 5, "deliveries": 0}
    assert "missing.csv: line 1" in (outcomes[1].error or "")
    assert "decimals.csv: line 2: Gross Credit (GC)" in (outcomes[3].error or "")
    with session_scope(engine) as session:
        letters = list_dead_letters(session, status="open", source=None, limit=10)
    assert {row.entity_key for row in letters} == {"truncated.xml", "missing.csv",
                                                   "decimals.csv"}
    # the bank sends the whole file under the same name: it is read, its dead letter closed
    truncated.write_bytes(MINIMAL.read_bytes())
    (again,) = ingest_payment_files([truncated], engine)
    assert again.status == "read" and again.counts()["traces"] == 1
    with session_scope(engine) as session:
        letters = list_dead_letters(session, status="open", source=None, limit=10)
    assert {row.entity_key for row in letters} == {"missing.csv", "decimals.csv"}
