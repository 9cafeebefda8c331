"""state.catalog: the SKUs remembered are the SKUs mapped, whether the caller dumped them
already (as their sku.changed events carry them) or not."""

from __future__ import annotations

import pytest

from state.catalog import load_listings, load_skus, remember_skus
from state.db import session_scope
from state.events import sku_events
from tests.state.procurement_world import sku


def test_a_sku_remembered_from_its_event_data_loads_as_the_sku_mapped(engine):
    mapped = [sku("SKU-A"), sku("SKU-API", "api", None)]
    events = sku_events(mapped)
    with session_scope(engine) as s:
        remember_skus(s, [(mapped[0], "101"), (mapped[1], None)],
                      dumped=[e.data for e in events])
    with session_scope(engine) as s:
        loaded = load_skus(s)
        listings = load_listings(s)
    assert loaded == {k.sku: k for k in mapped}
    assert listings == {"SKU-A": ("normal", ("sg1",)), "SKU-API": ("normal", ("sg1",))}


def test_dumped_skus_that_do_not_match_the_skus_are_refused(engine):
    mapped = [sku("SKU-A"), sku("SKU-B")]
    with session_scope(engine) as s, pytest.raises(ValueError, match="1 dumped SKU"):
        remember_skus(s, [(k, None) for k in mapped], dumped=[mapped[0].model_dump(mode="json")])
