"""The daily match: a generated day classified exactly as its ground truth says, class by
class; re-running a day replaces its result; corrections re-match the day; malformed sources
are refused with a clear message while the rest of the day goes on; batch rules."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select

from flows.reconcile import DaySources, load_rules, match_day, read_sources
from mappings.reconcile import DayResult, RulesError, rules_from_mapping
from state import remittance as remit
from state.db import session_scope
from state.models import OutboxMessage
from tests.flows.reconcile_world import DAY, ZONES, World, build_world


@pytest.fixture
def world(tmp_path: Path) -> World:
    return build_world(tmp_path / "day")


def _read(world: World) -> DaySources:
    return read_sources(world.payment_files, world.order_files, world.delivery_files)


def _run(engine, world: World, sources: DaySources | None = None) -> DayResult:
    return match_day(engine, DAY, sources or _read(world), load_rules(), key="test",
                     zones=ZONES)


def _found(result: DayResult) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for cls, items in result.by_class().items():
        keys = set()
        for d in items:
            if d.order_id:
                keys.add(f"{d.site}:{d.order_id}")
            elif d.payout_id:
                keys.add(d.payout_id)
            else:
                keys.add(next(iter(d.trace_ids)))
        out[cls.value] = keys
    return out


def test_the_generated_day_is_classified_exactly_as_its_ground_truth(engine, world):
    sources = _read(world)
    result = _run(engine, world, sources)
    traces = {t.trace_id: t for t in sources.traces}
    found = _found(result)
    orphan = found.pop("payment_without_order")
    assert {traces[t].references.provider_reference for t in orphan} == \
        world.truth["payment_without_order"]
    for cls, expected in world.truth.items():
        if cls != "payment_without_order":
            assert found[cls] == expected, cls
    groups: dict[str, set[str]] = {}
    for g in result.groups:
        groups.setdefault(g.kind.value, set()).add(
            g.payout_id or f"{g.site}:{g.order_id}")
    for kind, expected in world.groups.items():
        assert groups[kind] == expected, kind
    # every order of the day whose money agrees is matched, in its own currency (a duplicate
    # still pays its order; paid-but-not-delivered is paid)
    unpaid = world.truth["unpaid_order"] | world.truth["delivered_not_paid"] | \
        world.truth["amount_mismatch"]
    matched = {f"{o.site}:{o.order_id}" for o in result.outcomes if o.matched}
    day_orders = {k for k in world.orders if k != "sg1:CPREV"}
    assert matched == day_orders - unpaid
    usd = next(o for o in result.outcomes if o.order_id == "CUSD")
    assert (usd.currency, usd.received, usd.fee) == ("SGD", Decimal("135.00"),
                                                      Decimal("4.05"))
    assert all(isinstance(o.received, Decimal) for o in result.outcomes)
    # the late COD settlement (two days on) and yesterday's order paid today are no orphans
    assert "sg1:CPREV" not in {f"{o.site}:{o.order_id}" for o in result.outcomes}


def test_malformed_sources_are_refused_and_the_day_goes_on(engine, world):
    sources = _read(world)
    refused = {o.file: o.error or "" for o in sources.outcomes if o.status == "rejected"}
    assert set(refused) == {p.name for p in world.malformed}
    assert "truncated" in refused["bank_truncated_2026-11-20.xml"] or \
        "[xml" in refused["bank_truncated_2026-11-20.xml"]
    assert "dtd_refused" in refused["bank_entity_2026-11-20.xml"]
    assert "missing column 'Net Currency'" in refused["acquirer_missing_2026-11-20.csv"]
    assert "line 1" in refused["acquirer_missing_2026-11-20.csv"]
    assert "100.005 has more decimals than EUR allows (2) [amount_decimals]" in \
        refused["acquirer_decimals_2026-11-20.csv"]
    assert "line 2" in refused["acquirer_decimals_2026-11-20.csv"]
    assert "'XYZ' is not an ISO 4217 currency [currency_unknown]" in \
        refused["wallet_xyz_2026-11-20.csv"]
    assert all(o.status == "read" for o in sources.outcomes if o.file not in refused)
    _run(engine, world, sources)
    with session_scope(engine) as s:
        from state.store import list_dead_letters

        letters = {d.entity_key for d in list_dead_letters(s, flow="reconcile_day")}
    assert letters == set(refused)


def test_rerunning_a_day_replaces_its_result(engine, world):
    first = _run(engine, world)
    second = _run(engine, world)
    assert first.discrepancies == second.discrepancies and first.groups == second.groups
    with session_scope(engine) as s:
        n = s.scalar(select(func.count()).select_from(remit.ReconDiscrepancy))
        g = s.scalar(select(func.count()).select_from(remit.ReconGroup))
        o = s.scalar(select(func.count()).select_from(remit.ReconOutcome))
    assert (n, g, o) == (len(second.discrepancies), len(second.groups),
                         len(second.outcomes))


def test_corrections_are_adjustments_and_the_day_rematches(engine, world):
    _run(engine, world)
    with session_scope(engine) as s:
        remit.add_correction(s, day=DAY, kind="adjust", target="order:sg1:CMIS",
                             amount=Decimal("1.00"), currency="SGD",
                             reason="acquirer short-paid; claimed", created_by="ops-anna")
        remit.add_correction(s, day=DAY, kind="accept", target="order:sg1:CPND",
                             reason="delivered by e-mail", created_by="ops-anna")
    sources = _read(world)
    orphan = next(t for t in sources.traces
                  if t.references.provider_reference == "PP-ORPH")
    with session_scope(engine) as s:
        remit.add_correction(s, day=DAY, kind="assign", target=f"trace:{orphan.trace_id}",
                             assign_to="order:sg1:U1", reason="wrong invoice id",
                             created_by="ops-ben")
    result = _run(engine, world, sources)
    found = _found(result)
    assert found["amount_mismatch"] == {"sg1:U1"}  # CMIS adjusted; U1 now short, see below
    assert [d.status for d in result.discrepancies if d.order_id == "CPND"] == ["accepted"]
    assert found["payment_without_order"] == set()
    # U1 (70.00) now has the 45.00 payment: no longer unpaid, but short
    assert found["unpaid_order"] == set() and "sg1:U1" in found["paid_not_delivered"]
    cmis = next(o for o in result.outcomes if o.order_id == "CMIS")
    assert cmis.received == Decimal("120.00") and cmis.matched
    with pytest.raises(remit.RemittanceError):
        with session_scope(engine) as s:
            remit.add_correction(s, day=DAY, kind="adjust", target="order:sg1:X",
                                 reason="", created_by="x")


def test_a_blocked_batch_closes_only_with_an_approval_and_reopens_as_a_reversal(
        engine, world):
    _run(engine, world)
    threshold = load_rules().close_threshold
    with session_scope(engine) as s:
        remit.refresh_batches(s, DAY)
        card = remit.validate_batch(s, "20261120-sg1-card", threshold=threshold)
        assert {d["class"] for d in card.blocking} >= {"amount_mismatch", "unpaid_order",
                                                       "payout_mismatch"}
        with pytest.raises(remit.RemittanceError, match="approval"):
            remit.close_batch(s, "20261120-sg1-card")
        wallet = remit.validate_batch(s, "20261120-sg1-wallet_balance", threshold=threshold)
        assert wallet.blocking == [] and wallet.gross == Decimal("125.00")
        remit.close_batch(s, "20261120-sg1-wallet_balance")
        approval = remit.record_approval(s, "20261120-sg1-card", approved=True,
                                         approved_by="ops-anna", comment="known",
                                         flow_run_id=None)
        closed = remit.close_batch(s, "20261120-sg1-card", approval=approval)
        assert closed.approved_by == "ops-anna"
    # closed is immutable: a re-match does not touch it
    _run(engine, world)
    with session_scope(engine) as s:
        assert remit.current(s, "20261120-sg1-card").status == "closed"
        reversal, fresh = remit.reopen_batch(s, "20261120-sg1-card", who="ops-anna",
                                             why="chargeback came late")
        assert (reversal.version, reversal.reverses_version, fresh.version) == (2, 1, 3)
        assert reversal.net == -closed.net and fresh.status == "open"
    with session_scope(engine) as s:
        keys = sorted(r.idempotency_key for r in s.scalars(select(OutboxMessage)))
    assert keys == ["je-remit-20261120-sg1-card-v1", "je-remit-20261120-sg1-card-v2",
                    "je-remit-20261120-sg1-wallet_balance-v1", "remit-20261120-sg1-card-v1",
                    "remit-20261120-sg1-card-v2", "remit-20261120-sg1-wallet_balance-v1"]


def test_rule_files_are_checked_setting_by_setting():
    base = {"version": 1, "references": [{"trace": "merchant_reference", "order": "order_id"}]}
    assert rules_from_mapping(base).tolerance_absolute == 0
    with pytest.raises(RulesError, match="quoted decimal"):
        rules_from_mapping({**base, "amount": {"tolerance_absolute": 0.01}})
    with pytest.raises(RulesError, match="rounding mode"):
        rules_from_mapping({**base, "amount": {"rounding": "bankers"}})
    with pytest.raises(RulesError, match="FROM/TO"):
        rules_from_mapping({**base, "currency": {"rates": {"USDSGD": "1.3"}}})
    with pytest.raises(RulesError, match="version"):
        rules_from_mapping({"references": base["references"]})
