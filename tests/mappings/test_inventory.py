"""The quota policy's split: whole units, never more than there are, the same every time."""

from __future__ import annotations

import pytest

from mappings.inventory import split


@pytest.mark.parametrize("weights", [{}, {"sg1": 3.7}, {"sg1": 0.1}, {"sg1": -5.0}])
@pytest.mark.parametrize("units", [1, 7, 10**6 + 3])
def test_one_site_shows_every_unit_whatever_its_weight(units, weights):
    assert split(units, ["sg1"], weights) == {"sg1": units}


def test_units_are_split_by_weight_with_the_remainder_to_the_largest_fractions():
    shares = split(10, ["sg1", "my1", "th1"], {"sg1": 5.0, "my1": 1.0})
    # weights 6, 2, 1 (recent sales plus one): 6.67, 2.22, 1.11 -> 6, 2, 1, one left for sg1
    assert shares == {"sg1": 7, "my1": 2, "th1": 1}
    assert sum(split(1, ["sg1", "my1"], {}).values()) == 1
    assert split(0, ["sg1", "my1"], {"sg1": 2.0}) == {"sg1": 0, "my1": 0}
    assert split(5, [], {}) == {}


def test_one_selling_site_gets_what_the_split_gives_it():
    """The one-site path of ``site_quotas`` gives what the general path gives: every batch's
    sellable units, none of a batch kept for other sites, nothing below zero."""
    from dataclasses import dataclass
    from datetime import date

    from mappings.inventory import BatchShare, site_quotas

    @dataclass
    class B:
        batch_no: str
        units: int
        sites: tuple[str, ...] = ()
        expires_on: date | None = None
        status: str = "active"

        def sellable(self, on: date) -> int:
            return self.units

    batches = [B("B1", 7), B("B2", 5, ("sg2",)), B("B3", 0), B("B4", -2),
               B("B5", 3, ("sg1", "sg2"), date(2027, 1, 1))]
    on = date(2026, 11, 23)
    got = site_quotas(batches, sites=["sg1"], weights={"sg1": 4.0}, on=on)
    assert got == {"sg1": [BatchShare("B1", 7, None, "active"),
                           BatchShare("B2", 0, None, "active"),
                           BatchShare("B3", 0, None, "active"),
                           BatchShare("B4", 0, None, "active"),
                           BatchShare("B5", 3, date(2027, 1, 1), "active")]}
    # the same as the general path gives the site when another site sells nothing
    both = site_quotas(batches, sites=["sg1", "zz9"], weights={"zz9": -1e9}, on=on)
    assert sum(s.available for s in both["sg1"]) + sum(s.available for s in both["zz9"]) == 10
    assert site_quotas(batches, sites=[], weights={}, on=on) == {}
