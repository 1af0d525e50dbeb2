"""Encryption of content at rest, per organisation (SPEC.md "Version 2" → "Data at rest, per organisation").

- :mod:`gateway.crypto.seal` — the sealed format: AES-256-GCM in 64 KiB chunks, streamed;
- :mod:`gateway.crypto.ring` — the master key file and the wrapped data keys in the store;
- :mod:`gateway.crypto.vault` — what a store calls to write and read content;
- :mod:`gateway.crypto.commands` — ``bmrgw keys``.
"""

from __future__ import annotations

from .ring import KeyRing, MasterKey, write_master_key
from .seal import DataKey, sealed_size
from .vault import Vault, vault_for

__all__ = ["DataKey", "KeyRing", "MasterKey", "Vault", "sealed_size", "vault_for", "write_master_key"]
