"""The bmrgw benchmark harness (``make bench``).

It measures the gateway against the two things an operator would compare it
with: calling the business AP directly, and putting nginx in front of it as a
plain pass-through proxy.  All three targets are real subprocesses on
loopback, loaded by wrk in the same run, so the ratios between them hold even
though the absolute numbers depend on the machine.  Results go to stdout and
to ``bench/RESULTS.md``; see ``bench/README.md`` for how to add a scenario.
"""

from __future__ import annotations

from .cli import main

__all__ = ["main"]
