"""The serving process's garbage collection: start-up objects frozen, young collections rare.

Modules, the config and the route table live as long as the process, and
hardly any of what a request makes is cyclic garbage: reference counting
frees it.  With Python's defaults the collector still walked it all: under
the 1 KiB bench load a full collection ran about once a second (about 60 ms,
every request in flight waiting) and a young one every 700 net allocations,
about 110 a second — together about a tenth of the gateway's CPU.
``gc.freeze()`` moves the objects that exist now to a generation the
collector never walks, and a young collection every 10,000 net allocations
(under that load the net count did not reach 10,000 in 18 s) still bounds
what a cycle can hold.  Measured: 7–9 % fewer instructions per relayed
request, p99 at the 1 KiB saturation load halved (bench/PROFILE.md).
"""

from __future__ import annotations

import gc

__all__ = ["settle", "resettle"]

#: Net allocations of tracked objects between two young collections (Python's default: 700).
YOUNG = 10_000


def settle() -> None:
    """Take what exists now out of the collector's work, and collect the young rarely (``bmrgw serve``,
    once it listens)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG, *gc.get_threshold()[1:])


def resettle() -> None:
    """After a new route table replaced the old: let the collector see the frozen objects once (the old
    table among them), then settle again.  Nothing to do in a process that never settled."""
    if gc.get_freeze_count():
        gc.unfreeze()
        settle()
