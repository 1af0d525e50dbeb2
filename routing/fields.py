"""Typed readers of YAML values for every settings module (endpoints, gateway settings, refdb).

Each reader checks one value and names its dotted path in the
:class:`~gateway.errors.ConfigError` it raises (``endpoints.kaigo.url: ...``).
Modules use them as ``read.integer(value, "gateway.x", low=1)`` after
``from routing import fields as read``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError
from gateway.terminal import url_problem

__all__ = ["NAME_PATTERN", "MAX_TIMEOUT", "mapping", "section", "known", "string", "name", "integer", "number",
           "url", "file", "names"]

#: Business-AP, peer and gateway names: safe in URL paths and the HTTP Via header.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: Longest timeout any setting may name, in seconds.
MAX_TIMEOUT = 3600.0


def mapping(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path}: must be a mapping, not {type(value).__name__}")
    for key in value:
        if not isinstance(key, str):
            raise ConfigError(f"{path}: keys must be strings, not {key!r}")
    return value


def section(m: Mapping[str, Any], key: str) -> Any:
    """A top-level or nested section; absent or empty (``key:``) means defaults."""
    value = m.get(key)
    return {} if value is None else value


def known(m: Mapping[str, Any], path: str, allowed: set[str]) -> None:
    unknown = sorted(set(m) - allowed)
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r} (expected one of {', '.join(sorted(allowed))})")


def string(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{path}: must be a non-empty string")
    return value


def name(value: Any, path: str) -> str:
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise ConfigError(f"{path}: {value!r} is not a valid name (letters, digits, '.', '_', '-'; at most 64)")
    return value


def integer(value: Any, path: str, *, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ConfigError(f"{path}: must be an integer {bound}, not {value!r}")
    return value


def flag(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{path}: must be true or false, not {value!r}")
    return value


def number(value: Any, path: str, *, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ConfigError(f"{path}: must be a number between {low:g} and {high:g}, not {value!r}")
    return float(value)


def url(value: Any, path: str) -> str:
    text = string(value, path)
    why = url_problem(text)
    if why is not None:
        raise ConfigError(f"{path}: {text!r} {why}")
    return text


def file(value: Any, path: str, base: Path) -> str:
    """An existing readable file named in the config, made absolute against the config's folder."""
    text = string(value, path)
    resolved = Path(text) if Path(text).is_absolute() else base / text
    if not resolved.is_file():
        raise ConfigError(f"{path}: no such file {str(resolved)!r}")
    return str(resolved)


def names(value: Any, path: str, *, wildcard: bool) -> frozenset[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise ConfigError(f"{path}: must be a list of names")
    for item in value:
        if isinstance(item, int) and not isinstance(item, bool):
            raise ConfigError(f"{path}: write ids as quoted strings ('{item}'), so leading zeros survive")
        if not (wildcard and item == "*"):
            name(item, path)
    return frozenset(value)
