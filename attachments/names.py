"""Safe file names for files received from other sites (SPEC.md "Qualities": path tricks).

A received file name becomes one entry in the receiver's folder and nothing
else: no path separators, no ``..``, no absolute or drive paths, no control
characters, and none of the device names Windows reserves (a DC's folder may
be shared with Windows machines, where ``CON`` or ``nul.txt`` is a device).
"""

from __future__ import annotations

import re
import unicodedata

from gateway.errors import UnsafeFileName

__all__ = ["safe_file_name", "MAX_NAME_BYTES"]

#: Longest name most file systems store (ext4, XFS, NTFS in UTF-16 units is larger).
MAX_NAME_BYTES = 255

_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
    + [f"COM{i}" for i in range(1, 10)] + [f"LPT{i}" for i in range(1, 10)]
    + ["COM¹", "COM²", "COM³", "LPT¹", "LPT²", "LPT³"]
)
# Separators of every platform and characters Windows refuses in names.
_FORBIDDEN = re.compile(r'[/\\:*?"<>|]')


def safe_file_name(name: str) -> str:
    """``name`` if it is safe as a single entry of a folder; raises UnsafeFileName otherwise."""
    if not name or not name.strip():
        raise UnsafeFileName("the file name is empty")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in name):
        raise UnsafeFileName(f"the file name {name!r} contains control or format characters")
    if _FORBIDDEN.search(name):
        raise UnsafeFileName(f"the file name {name!r} contains a path separator or a character "
                             "that is not allowed in file names (/ \\ : * ? \" < > |)")
    if name.startswith("."):
        # ".", ".." and hidden files; the receiver keeps its unfinished files in a dot folder.
        raise UnsafeFileName(f"the file name {name!r} starts with a dot (relative path or hidden file)")
    if name != name.strip() or name.endswith("."):
        raise UnsafeFileName(f"the file name {name!r} starts or ends with a space, or ends with a dot")
    if name.split(".", 1)[0].upper().rstrip() in _RESERVED:
        raise UnsafeFileName(f"the file name {name!r} is a reserved device name")
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise UnsafeFileName(f"the file name is longer than {MAX_NAME_BYTES} bytes")
    return name
