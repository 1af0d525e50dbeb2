"""A partner's ``before`` and ``after`` commands (issue 21, item 4).

A hook is a program and its fixed arguments, as a list; the paths of the
files concerned are appended as further arguments.  It is started without a
shell (nothing in a file name is ever interpreted: spaces, ``;``, ``$``,
quotes and Japanese names arrive as they are, on Windows as on Linux), with
no input, within ``timeout`` seconds — then it is killed.  Its exit status
and the last line it wrote are reported; a hook that fails is a
:class:`~gateway.jx.failure.RoundFailure` of kind ``hook``.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .failure import Kind, RoundFailure, fit

__all__ = ["Hook", "run_hook"]

#: Output kept from a hook (its last lines are logged).
_TAIL = 16 * 1024


@dataclass(frozen=True, kw_only=True)
class Hook:
    """A command run before or after a partner's round."""

    argv: tuple[str, ...]
    """The program and its fixed arguments; the file paths follow them."""
    timeout: float = 300.0
    """Seconds the command may run; then it is killed and the hook has failed."""


def run_hook(hook: Hook, when: str, paths: Sequence[Path], *, log: logging.Logger,
             env: dict[str, str] | None = None) -> None:
    """Run ``hook`` with ``paths``; raise a ``hook`` :class:`RoundFailure` unless it exits 0 in time."""
    argv = [*hook.argv, *map(str, paths)]
    environment = {**os.environ, **(env or {})}
    log.info("%s hook: %s (%d file%s)", when, hook.argv[0], len(paths), "" if len(paths) == 1 else "s")
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=hook.timeout, env=environment, shell=False, check=False)
    except subprocess.TimeoutExpired as exc:
        _show(log, when, exc.output)
        raise RoundFailure(Kind.HOOK, f"{when} hook {fit(hook.argv[0], 60)} did not end within "
                                      f"{hook.timeout:g} s and was killed") from exc
    except OSError as exc:
        raise RoundFailure(Kind.HOOK, f"{when} hook {fit(hook.argv[0], 60)} cannot be started: "
                                      f"{exc.strerror or exc}") from exc
    last = _show(log, when, done.stdout)
    if done.returncode != 0:
        raise RoundFailure(Kind.HOOK, f"{when} hook {fit(hook.argv[0], 60)} exited with status {done.returncode}"
                                      + (f": {fit(last, 80)}" if last else ""))


def _show(log: logging.Logger, when: str, output: bytes | str | None) -> str:
    """Log the hook's output (its end); return its last non-empty line."""
    if not output:
        return ""
    data = output if isinstance(output, bytes) else output.encode()
    text = data[-_TAIL:].decode("utf-8", errors="replace")
    lines = [line for line in text.splitlines() if line.strip()]
    for line in lines[-20:]:
        log.info("%s hook: | %s", when, line)
    return lines[-1].strip() if lines else ""
