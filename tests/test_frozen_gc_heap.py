"""frozen_gc_heap (bench/load/driver_http.py) nests: the outermost block collects and freezes, an inner block's end
leaves the heap frozen (the cross-check freezes a whole round around run_load's own block), the outermost unfreezes."""

import gc

from servescope.bench.load.driver_http import frozen_gc_heap


def test_blocks_nest_and_only_the_outermost_unfreezes():
    gc.unfreeze()  # start from an unfrozen heap, whatever an earlier test of this process left
    with frozen_gc_heap():
        frozen = gc.get_freeze_count()
        assert frozen > 0
        with frozen_gc_heap():
            assert gc.get_freeze_count() == frozen  # no second collection moved new objects in
        assert gc.get_freeze_count() == frozen  # the inner end did not unfreeze the outer block's heap
    assert gc.get_freeze_count() == 0
