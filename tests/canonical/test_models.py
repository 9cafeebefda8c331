from __future__ import annotations

import json
from datetime import UTC, date, datetime, time, timedelta, timezone

import pytest
from pydantic import ValidationError

from canonical import (
    Batch,
    CodeStatus,
    InvalidTransition,
    Money,
    Site,
    Sku,
    VoucherCode,
)
from canonical.voucher import RETAIL_STATUS

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def sku(**over):
    data = {
        "sku": "SKU-1", "name": "Voucher", "kind": "gift_card",
        "face_value": {"amount": "10", "currency": "SGD"}, "sales_areas": ["sg2", "sg1"],
        "issuance_mode": "code_pool", "write_off_type": "on_redemption", "status": "normal",
        "updated_at": "2026-11-20T08:15:00+08:00",
    }
    data.update(over)
    return Sku.model_validate(data)


def test_sku_normalises_areas_and_time():
    s = sku()
    assert s.sales_areas == ("sg1", "sg2")
    assert s.updated_at == datetime(2026, 11, 20, 0, 15, tzinfo=UTC)
    assert s.face_value == Money.of("10.00", "SGD")


@pytest.mark.parametrize(
    ("over", "words"),
    [
        ({"status": "deleted"}, "status"),
        ({"kind": "toaster"}, "kind"),
        ({"issuance_mode": "magic"}, "issuance_mode"),
        ({"sales_areas": ["sg1", "sg1"]}, "listed twice"),
        ({"face_value": {"amount": "0", "currency": "SGD"}}, "must be positive"),
        ({"updated_at": "2026-11-20T08:15:00"}, "timezone"),
        ({"sku": "has space"}, "sku"),
        ({"code_format": "([a-z"}, "regular expression"),
        ({"colour": "red"}, "Extra inputs"),
    ],
)
def test_sku_strictness(over, words):
    with pytest.raises(ValidationError) as info:
        sku(**over)
    assert words in str(info.value)


def test_code_format():
    s = sku(code_format=r"[A-Z0-9]{12}")
    assert s.matches_code_format("ABCDEF123456")
    assert not s.matches_code_format("abc")


def test_site_business_day_uses_its_own_zone_and_cutoff():
    jakarta = Site(code="id1", name="ID", country="ID", currency="IDR", timezone="Asia/Jakarta")
    # 18:30 UTC is 01:30 the next day in Jakarta (UTC+7)
    assert jakarta.business_date(datetime(2026, 11, 22, 18, 30, tzinfo=UTC)) == date(2026, 11, 23)
    late = jakarta.model_copy(update={"day_cutoff": time(4, 0)})
    assert late.business_date(datetime(2026, 11, 22, 18, 30, tzinfo=UTC)) == date(2026, 11, 22)
    start, end = jakarta.day_bounds(date(2026, 11, 23))
    assert start.astimezone(UTC) == datetime(2026, 11, 22, 17, 0, tzinfo=UTC)
    assert end - start == timedelta(days=1)
    with pytest.raises(ValidationError, match="unknown IANA time zone"):
        Site(code="x1", name="X", country="XX", currency="EUR", timezone="Mars/Olympus")


def batch(**over):
    data = {
        "sku": "SKU-1", "batch_no": "B-1", "issuance_mode": "code_pool", "quantity": 10,
        "available": 8, "remaining": 9, "status": "active",
        "unit_cost": {"amount": "7.50", "currency": "SGD"}, "expiry_type": "fixed_date",
        "expires_on": "2027-01-31", "received_at": NOW.isoformat(), "sites": ["sg1"],
    }
    data.update(over)
    return Batch.model_validate(data)


def test_batch_quantities_are_consistent():
    b = batch()
    assert b.is_sellable(date(2026, 12, 1), "sg1")
    assert not b.is_sellable(date(2027, 2, 1), "sg1")  # expired
    assert not b.is_sellable(date(2026, 12, 1), "my1")  # not allowed there
    with pytest.raises(ValidationError, match=r"available .* exceeds remaining"):
        batch(available=10, remaining=9)
    with pytest.raises(ValidationError, match="exceeds quantity"):
        batch(remaining=11)
    with pytest.raises(ValidationError, match="expires_on is required"):
        batch(expires_on=None)
    with pytest.raises(ValidationError, match="expiry_days is required"):
        batch(expiry_type="days_after_sale", expires_on=None)


def test_voucher_code_is_masked_everywhere():
    code = VoucherCode(code="ABCD-EFGH-1234", pin="987654", sku="SKU-1", batch_no="B-1")
    assert "ABCD-EFGH" not in repr(code)
    assert "ABCD-EFGH" not in str(code)
    dumped = code.model_dump_json()
    assert "ABCD-EFGH" not in dumped and "9876" not in dumped
    assert json.loads(dumped)["code"].endswith("1234")
    assert code.code.get_secret_value() == "ABCD-EFGH-1234"


def test_voucher_chronology_is_append_only_and_transitions_are_checked():
    code = VoucherCode(code="ABCDEFGH1234", sku="SKU-1", batch_no="B-1")
    allocated = code.transition(CodeStatus.ALLOCATED, at=NOW, actor="flow:ingest",
                                system="vouchflow", action="allocate")
    sold = allocated.transition(CodeStatus.SOLD, at=NOW, actor="flow:ingest",
                                system="wallet:sg1", action="deliver")
    assert code.status is CodeStatus.IN_STOCK and code.events == ()
    assert [e.to_status for e in sold.events] == [CodeStatus.ALLOCATED, CodeStatus.SOLD]
    with pytest.raises(InvalidTransition, match="cannot go from redeemed"):
        sold.transition(CodeStatus.REDEEMED, at=NOW, actor="a", system="s",
                        action="redeem").transition(CodeStatus.IN_STOCK, at=NOW, actor="a",
                                                    system="s", action="restock")


def test_retail_statuses_map_onto_the_general_ones():
    assert RETAIL_STATUS["Handed over"] is CodeStatus.ALLOCATED
    assert set(RETAIL_STATUS.values()) <= set(CodeStatus)
    partly = VoucherCode(code="ABCDEFGH1234", sku="SKU-1", batch_no="B-1", status="sold",
                         spent={"amount": "3.00", "currency": "SGD"}, bound_to="card-42")
    assert partly.spent == Money.of("3", "SGD")


def test_other_offsets_become_utc():
    s = sku(updated_at=datetime(2026, 1, 1, 9, 0, tzinfo=timezone(timedelta(hours=9))))
    assert s.updated_at == datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
