"""Lookups by many keys (``state.store._in_keys``: the keys bound as one value) find exactly
what an ``IN`` list finds, on SQLite and PostgreSQL, whatever the keys hold."""

from __future__ import annotations

from state.db import session_scope
from state.store import (
    DeadLetterItem,
    canonical_ids,
    load_fingerprints,
    load_fingerprints_for_targets,
    record_dead_letters,
    resolve_dead_letters,
    save_fingerprints,
    upsert_xrefs,
)

ODD = ["a'b", 'q"q', "x,y", "[1]", "é-ü", "😀", "back\\slash", "  spaced ", "%_like", ""]
"""Keys a JSON array or an SQL literal could get wrong."""


def _keys(n: int) -> list[str]:
    return [f"SKU-{i}" for i in range(n)] + ODD


def test_fingerprints_by_many_keys_and_at_several_targets(engine):
    keys = _keys(1200)
    with session_scope(engine) as s:
        save_fingerprints(s, "wallet:sg1", "product", {k: f"d1-{k}" for k in keys[::2]})
        save_fingerprints(s, "wallet:sg2", "product", {k: f"d2-{k}" for k in keys[::3]})
        save_fingerprints(s, "wallet:sg1", "quota", {k: "other" for k in keys})
    wanted = [*keys, "missing", *keys[:5]]  # absent and repeated keys too
    with session_scope(engine) as s:
        one = load_fingerprints(s, "wallet:sg1", "product", wanted)
        both = load_fingerprints_for_targets(s, ["wallet:sg1", "wallet:sg2", "wallet:sg3"],
                                             "product", wanted)
        every = load_fingerprints_for_targets(s, ["wallet:sg1", "wallet:sg2"], "product", None)
        none = load_fingerprints_for_targets(s, ["wallet:sg1"], "product", [])
    assert one == {k: f"d1-{k}" for k in keys[::2]}
    assert both == {"wallet:sg1": one, "wallet:sg2": {k: f"d2-{k}" for k in keys[::3]},
                    "wallet:sg3": {}}
    assert every == {"wallet:sg1": both["wallet:sg1"], "wallet:sg2": both["wallet:sg2"]}
    assert none == {"wallet:sg1": {}}


def test_cross_references_and_dead_letters_by_many_keys(engine):
    keys = _keys(700)
    with session_scope(engine) as s:
        upsert_xrefs(s, "erp", "inventoryItem", {k: f"c-{k}" for k in keys})
        record_dead_letters(s, [DeadLetterItem(flow="f", source="erp", entity_type="t",
                                               entity_key=k, reason="bad", payload=None)
                                for k in keys[::7]])
    with session_scope(engine) as s:
        found = canonical_ids(s, "erp", "inventoryItem", [*keys, "nope"])
        closed = resolve_dead_letters(s, "f", "erp", "t", [*keys[::14], "nope"])
        again = resolve_dead_letters(s, "f", "erp", "t", keys[::14])
    assert found == {k: f"c-{k}" for k in keys}
    assert closed == len(keys[::14]) and again == 0


def test_a_query_of_some_keys_all_keys_or_none(engine):
    """``of_keys``: the rows of the keys given (bound as one value), every row for None, no
    row for no keys."""
    from sqlalchemy import select

    from state.models import Fingerprint
    from state.store import of_keys

    keys = _keys(1100)
    with session_scope(engine) as s:
        save_fingerprints(s, "wallet:sg1", "product", {k: f"d-{k}" for k in keys})
    query = select(Fingerprint.entity_key).where(Fingerprint.target == "wallet:sg1")
    with session_scope(engine) as s:
        some = set(s.scalars(of_keys(s, query, Fingerprint.entity_key, [*keys[::3], "nope"])))
        every = set(s.scalars(of_keys(s, query, Fingerprint.entity_key, None)))
        none = list(s.scalars(of_keys(s, query, Fingerprint.entity_key, set())))
    assert some == set(keys[::3]) and every == set(keys) and none == []
