"""flows.heap: a sync's freeze of the heap is undone when the last holder ends, and never
undoes a freeze someone else made."""

from __future__ import annotations

import gc

from flows.heap import held_heap, hold


def _walked(obj: object) -> bool:
    """Whether the collector's generations (not the frozen one) hold ``obj``."""
    return any(o is obj for o in gc.get_objects())


def test_what_exists_is_frozen_for_the_block_and_released_after():
    gc.unfreeze()
    before = [0]
    with held_heap():
        assert gc.get_freeze_count() > 0 and not _walked(before)
        kept = [[i] for i in range(10)]  # allocated after: walked until hold()
        assert _walked(kept)
        hold()
        assert not _walked(kept)
        with held_heap():  # nested: one freeze, still there when the inner block ends
            pass
        assert gc.get_freeze_count() > 0 and not _walked(kept)
    assert gc.get_freeze_count() == 0 and _walked(kept) and _walked(before)
    hold()  # outside a block: nothing
    assert gc.get_freeze_count() == 0


def test_a_freeze_made_elsewhere_is_left_as_it_is():
    gc.freeze()
    try:
        with held_heap():
            kept = [[i] for i in range(10)]
            hold()
            assert _walked(kept)  # not ours to extend
        assert gc.get_freeze_count() > 0  # and not ours to undo
    finally:
        gc.unfreeze()


def test_young_collections_are_rarer_while_the_heap_is_held():
    """The first threshold is raised for the block (nested blocks share it) and put back by
    the last one; a collector switched off, or thresholds changed meanwhile, are left so."""
    from flows.heap import YOUNG_THRESHOLD

    saved = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        with held_heap():
            assert gc.get_threshold() == (YOUNG_THRESHOLD, 10, 10)
            with held_heap():
                assert gc.get_threshold() == (YOUNG_THRESHOLD, 10, 10)
            assert gc.get_threshold() == (YOUNG_THRESHOLD, 10, 10)
        assert gc.get_threshold() == (700, 10, 10)

        with held_heap():
            gc.set_threshold(1234, 10, 10)  # someone else's choice, made meanwhile
        assert gc.get_threshold() == (1234, 10, 10)

        gc.set_threshold(0, 10, 10)  # collection off: not switched on by a sync
        with held_heap():
            assert gc.get_threshold()[0] == 0
        assert gc.get_threshold()[0] == 0
    finally:
        gc.set_threshold(*saved)


def test_collector_off_holds_collection_off_and_puts_it_back_as_it_was():
    import gc

    from flows.heap import collector_off

    assert gc.isenabled()
    with collector_off():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with collector_off():
            pass
        assert not gc.isenabled()  # off before: left off
    finally:
        gc.enable()
