"""What a refdb request carries (SPEC.md capability (F)): its body in chunks, and its scalar parameters,
read, checked, and turned into filters.

Each helper raises :class:`~gateway.errors.InvalidRequest` naming the
parameter, so the client's fault says what to change.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import aiohttp
from aiohttp import web
from lxml import etree

from gateway.errors import (
    InvalidRequest,
    MalformedMessage,
    RequestTimeout,
)

from .config import Dataset
from .store import MAX_LIMIT, OPERATORS, Filter, PushResult
from .values import BadValue, parse_value
from .wire import element

__all__ = ["CHUNK", "gather", "DEFAULT_LIMIT", "MAX_OFFSET", "add_result", "required", "mode", "integer", "optional_integer", "limit",
           "offset", "filter_of"]


DEFAULT_LIMIT = 1000
#: Highest ``offset`` a Query or Changes may name: far past any page a dataset has, and an INTEGER
#: everywhere (a bigger one failed in the database and was answered as a 503).
MAX_OFFSET = 2**31 - 1
#: Versions are BIGINT columns.
MAX_VERSION = 2**63 - 1


def add_result(out: etree._Element, result: PushResult) -> None:
    for name in ("dataset", "version", "received", "inserted", "updated", "deleted", "unchanged"):
        element(out, name, getattr(result, name))


def required(scalars: Mapping[str, str], name: str) -> str:
    value = scalars.get(name)
    if not value:
        raise InvalidRequest(f"the request has no {name}", detail=name)
    return value


def mode(scalars: Mapping[str, str]) -> str:
    mode = scalars.get("mode") or "diff"
    if mode not in ("full", "diff"):
        raise InvalidRequest(f"mode must be full or diff, not {mode!r}", detail="mode")
    return mode


def integer(scalars: Mapping[str, str], name: str, default: int | None, high: int = MAX_VERSION) -> int:
    text = scalars.get(name)
    if not text:
        if default is None:
            raise InvalidRequest(f"the request has no {name}", detail=name)
        return default
    try:
        value = int(text)
    except ValueError:
        raise InvalidRequest(f"{name} must be an integer, not {text!r}", detail=name) from None
    if not 0 <= value <= high:
        raise InvalidRequest(f"{name} must be between 0 and {high}, not {text}", detail=name)
    return value


def offset(scalars: Mapping[str, str]) -> int:
    return integer(scalars, "offset", 0, MAX_OFFSET)


def optional_integer(scalars: Mapping[str, str], name: str) -> int | None:
    return integer(scalars, name, None) if scalars.get(name) else None


def limit(scalars: Mapping[str, str]) -> int:
    limit = integer(scalars, "limit", DEFAULT_LIMIT)
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(f"limit must be between 1 and {MAX_LIMIT}, not {limit}", detail="limit")
    return limit


def filter_of(dataset: Dataset, attributes: Mapping[str, str], number: int) -> Filter:
    name = attributes.get("name") or ""
    op = (attributes.get("op") or "eq").strip()
    column = dataset.column(name)
    if column is None:
        raise InvalidRequest(f"filter {number}: {dataset.name} has no column {name!r}", detail=name)
    if op not in OPERATORS:
        raise InvalidRequest(f"filter {number}: op must be one of {', '.join(OPERATORS)}, not {op!r}", detail=op)
    try:
        typed = parse_value(attributes.get("value"), column)
    except BadValue as exc:
        raise InvalidRequest(f"filter {number} on {name}: {exc}", detail=name) from None
    if typed is None and op not in ("eq", "ne"):
        raise InvalidRequest(f"filter {number} on {name}: {op} needs a value", detail=name)
    return Filter(column=name, op=op, value=typed)

CHUNK = 256 * 1024


async def gather(request: web.Request, timeout: float) -> bytes:
    """The next ``CHUNK`` bytes of the body (fewer only at its end; empty when it has ended).

    TCP delivers a big body in pieces of a few KiB; handing each to the worker
    thread would cost a thread switch per piece, which dominates on a busy host.
    """
    pieces: list[bytes] = []
    size = 0
    while size < CHUNK:
        try:
            async with asyncio.timeout(timeout):
                piece = await request.content.read(CHUNK - size)
        except TimeoutError as exc:
            raise RequestTimeout(f"the caller sent nothing for {timeout:g} s") from exc
        except (aiohttp.ClientPayloadError, ConnectionResetError) as exc:
            raise MalformedMessage(f"the request body is incomplete: {exc}") from exc
        if not piece:
            break
        pieces.append(piece)
        size += len(piece)
    return b"".join(pieces)
