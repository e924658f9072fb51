"""frozen_gc_heap (bench/load/driver_http.py) nests: the outermost block collects and freezes, an inner (or
overlapping: two run_load calls of one event loop) block neither freezes again nor unfreezes at its end; the
outermost unfreezes.

Whether an object is frozen is read from the object itself: gc.get_objects() lists the objects of the collected
generations, never the frozen ones. The freeze count is no probe: it falls whenever a frozen object is freed."""

import gc

from servescope.bench.load.driver_http import frozen_gc_heap


def is_frozen(probe: object) -> bool:
    return not any(tracked is probe for tracked in gc.get_objects())


def test_blocks_nest_and_only_the_outermost_unfreezes():
    gc.unfreeze()  # start from an unfrozen heap, whatever an earlier test of this process left
    before_outer = ["made before the outer block"]
    assert not is_frozen(before_outer)
    with frozen_gc_heap():
        assert is_frozen(before_outer)
        before_inner = ["made inside the outer block, before the inner one"]
        with frozen_gc_heap():
            assert not is_frozen(before_inner)  # the inner block did not freeze again
        assert is_frozen(before_outer)  # the inner block's end did not unfreeze the outer block's heap
    assert not is_frozen(before_outer)
