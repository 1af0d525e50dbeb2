"""File steps shared by the log archive, the JX store, file reassembly and config edits.

Durable: :func:`fsync_dir` makes a rename survive a power cut.  Private
(SPEC.md "Data at rest, per organisation"): whatever the gateway creates on
disk is readable by its own user only — folders 0700, files 0600 — whatever
the umask of the process that runs it, so :func:`private_dir`,
:func:`private_open` and :func:`private_file` give those modes explicitly
instead of leaving them to the umask.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["fsync_dir", "private_dir", "private_file", "private_open", "FILE_MODE", "DIR_MODE"]

#: Mode of every file the gateway creates.
FILE_MODE = 0o600
#: Mode of every folder the gateway creates.
DIR_MODE = 0o700
#: Flags that exist on POSIX only; Windows (where the poll client runs too) has neither, and O_BINARY instead.
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in the folder ``path`` survive a power cut.

    A no-op on Windows, which cannot open a folder to flush it (NTFS journals the rename itself).
    """
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY | _DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def private_dir(path: Path) -> Path:
    """Create ``path`` and its missing parents as 0700 folders (folders that exist are left as they are)."""
    missing = []
    at = path
    while not at.exists():
        missing.append(at)
        if at.parent == at:
            break
        at = at.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, DIR_MODE)
        except FileExistsError:
            continue  # created by a concurrent process or worker: its creator set the mode
        os.chmod(folder, DIR_MODE)  # the umask could only have removed bits; make it exact
    return path


def private_open(path: Path | str, flags: int) -> int:
    """``os.open`` that creates a missing file with mode 0600 (the umask cannot widen it)."""
    return os.open(path, flags | _CLOEXEC, FILE_MODE)


def private_file(path: Path) -> Path:
    """Create ``path`` empty with mode 0600 unless it exists (a SQLite file before its first connection).

    A file that exists is not opened: POSIX releases every lock this process holds on a file when any
    descriptor of it is closed, so opening and closing a store another connection of this process has
    open would drop that connection's SQLite locks (seen as 'disk I/O error' when nodes start together)."""
    try:
        os.close(private_open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        pass
    return path
