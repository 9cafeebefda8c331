"""SuiteQL rows in the REST record's shape, a page at a time
(``connectors.erp.records.suiteql_rows_to_records``), against the column-by-column rule."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from connectors.erp.records import (
    INVENTORY_ITEM_COLUMNS,
    suiteql_row_to_record,
    suiteql_rows_to_records,
)


def column_by_column(row: dict[str, Any], columns: dict[str, tuple[str, str]],
                     timezone: str) -> dict[str, Any]:
    """The rule, spelled out: each column in the row's order renamed and converted (a later
    column named like an earlier one's field replaces its value), unread checkboxes false."""
    zone = ZoneInfo(timezone)
    record: dict[str, Any] = {}
    for column, value in row.items():
        field, kind = columns.get(column, (column, "text"))
        if kind == "bool":
            record[field] = value == "T"
        elif kind == "number":
            try:
                record[field] = Decimal(value)
            except (ArithmeticError, ValueError, TypeError):
                record[field] = value
        elif kind == "time":
            try:
                record[field] = datetime.fromisoformat(value).replace(tzinfo=zone).isoformat()
            except (ValueError, TypeError):
                record[field] = value
        else:
            record[field] = value
    for field, kind in columns.values():
        if kind == "bool" and field not in record:
            record[field] = False
    return record


ROWS = [
    {"links": [], "id": "1", "externalid": "A-1", "itemid": "A-1", "displayname": "A",
     "isinactive": "F", "created": "2026-11-22T21:56:15", "modified": "2026-11-22T21:56:15",
     "custitem_vf_kind": "amount_coupon", "custitem_vf_face_value": "150",
     "custitem_vf_currency": "TWD", "custitem_vf_sales_areas": "tw1",
     "custitem_vf_issuance_mode": "code_pool", "custitem_vf_write_off_type": "supplier_report",
     "custitem_vf_status": "normal", "custitem_vf_code_format": "^[0-9]{16}$"},
    {"id": "2", "isinactive": "T", "custitem_vf_face_value": "10.50"},  # NULL columns absent
    {"id": "3", "isinactive": "X", "custitem_vf_face_value": "abc", "modified": "bad"},
    {"id": "4", "modified": None, "custitem_vf_face_value": None, "unknown": 1},
    {"id": "5", "custitem_vf_face_value": "1e3", "created": [1], "modified": "2026-03-29T02:30:00"},
    # a column outside the table named like a converted field, before and after that column
    {"id": "6", "lastModifiedDate": "Z", "modified": "2026-01-01T00:00:00"},
    {"modified": "2026-01-01T00:00:00", "lastModifiedDate": "Z", "id": "7"},
    {"id": "8", "isInactive": "T", "isinactive": "F"},
]


@pytest.mark.parametrize("timezone", ["UTC", "Asia/Singapore", "Europe/Berlin"])
def test_a_page_converts_as_each_row_column_by_column(timezone):
    expected = [column_by_column(r, INVENTORY_ITEM_COLUMNS, timezone) for r in ROWS]
    got = suiteql_rows_to_records(ROWS, INVENTORY_ITEM_COLUMNS, timezone)
    # the same fields, values, types and order
    assert [[(k, type(v), v) for k, v in r.items()] for r in got] == \
        [[(k, type(v), v) for k, v in r.items()] for r in expected]
    assert [suiteql_row_to_record(r, INVENTORY_ITEM_COLUMNS, timezone) for r in ROWS] == got


def test_two_columns_for_one_field_keep_the_later_one():
    columns = {"a": ("x", "number"), "b": ("x", "text"), "c": ("flag", "bool")}
    rows = [{"a": "1", "b": "2"}, {"b": "2", "a": "1"}, {"c": "T"}]
    expected = [column_by_column(r, columns, "UTC") for r in rows]
    assert suiteql_rows_to_records(rows, columns, "UTC") == expected
    assert [list(r) for r in suiteql_rows_to_records(rows, columns, "UTC")] == \
        [list(r) for r in expected]
