"""XSD and WSDL documents shipped with bmrgw, loaded once from package data."""

from __future__ import annotations

from functools import cache
from importlib import resources

__all__ = ["read"]


@cache
def read(name: str) -> bytes:
    """The bytes of a shipped schema document, e.g. ``read("demo.wsdl")``."""
    return resources.files(__name__).joinpath(name).read_bytes()
