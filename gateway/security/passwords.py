"""Password hashes for ``clients.*.basic.password_hash`` (issue 4, standard §4.5 secure communication).

scrypt (RFC 7914) from the standard library: salted, memory-hard and slow, so
a stolen endpoints.yaml does not give away passwords.  The text form carries
its parameters, so they can be raised later without breaking old hashes::

    $scrypt$ln=14,r=8,p=1$<salt, base64>$<key, base64>

Verification compares in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re

from routing.config import HASH_PREFIX

__all__ = ["hash_password", "verify_password", "HASH_PREFIX"]

_LOG2_N = 14  # N = 16384: 16 MiB and about 50 ms per check on this class of machine
_R = 8
_P = 1
_KEY_BYTES = 32
_SALT_BYTES = 16
_FORM = re.compile(r"\$scrypt\$ln=(\d+),r=(\d+),p=(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)")
_MAX_LOG2_N = 20  # refuse hashes that would make each check take seconds and gigabytes


def _scrypt(password: str, salt: bytes, log2_n: int, r: int, p: int, length: int) -> bytes:
    n = 1 << log2_n
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=length,
                          maxmem=256 * n * r + 1024 * 1024)


def hash_password(password: str) -> str:
    """A new salted hash of ``password`` in the text form above."""
    salt = os.urandom(_SALT_BYTES)
    key = _scrypt(password, salt, _LOG2_N, _R, _P, _KEY_BYTES)
    b64 = base64.b64encode
    return f"{HASH_PREFIX}ln={_LOG2_N},r={_R},p={_P}${b64(salt).decode()}${b64(key).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored``; a malformed hash never matches."""
    match = _FORM.fullmatch(stored)
    if match is None:
        return False
    log2_n, r, p = (int(match.group(i)) for i in (1, 2, 3))
    if not (1 <= log2_n <= _MAX_LOG2_N and 1 <= r <= 32 and 1 <= p <= 16):
        return False
    try:
        salt, key = base64.b64decode(match.group(4)), base64.b64decode(match.group(5))
    except ValueError:
        return False
    return hmac.compare_digest(_scrypt(password, salt, log2_n, r, p, len(key)), key)
