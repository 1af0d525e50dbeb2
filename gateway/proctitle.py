"""Process titles, so that ``ps`` and ``top`` show what each bmrgw process is.

A gateway with ``--workers`` is a supervisor, its workers and each worker's
log writer; without titles they all read ``python … bmrgw serve`` (the log
writer even ``python -c 'from multiprocessing…'``).  With them::

    bmrgw: supervisor of dc-local (127.0.0.1:8080, 2 workers)
    bmrgw: worker 1 of dc-local (127.0.0.1:8080)
    bmrgw: log writer of dc-local.w1

The title replaces the command line shown in ``/proc/PID/cmdline``; systemd
and the kernel still know the executable (``/proc/PID/exe``, ``comm``).
"""

from __future__ import annotations

from setproctitle import setproctitle

__all__ = ["name_process"]


def name_process(role: str) -> None:
    """Show ``bmrgw: ROLE`` as this process's title."""
    setproctitle(f"bmrgw: {role}")
