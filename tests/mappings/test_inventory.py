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
