"""Who may push and who may query a dataset (SPEC.md capability F, "Access").

The dataset's ``owner`` client pushes (Upsert, BeginPush, Commit, Abort,
Delete); its ``readers`` query (Query, Changes) — and so does the owner,
who holds the data anyway.  Any other authenticated client gets
``Forbidden``.  The caller is the client that :mod:`gateway.security.auth` identified
before the handler ran (HTTP Basic or the client certificate); without a
``clients`` section (open mode, development only) everyone may do everything.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from gateway.errors import Forbidden
from gateway.security.auth import client_of
from routing.config import Client

from .config import Dataset

__all__ = ["Caller", "caller_of", "check_push", "check_query"]


@dataclass(frozen=True)
class Caller:
    """The authenticated client of a request; None in open mode."""

    client: Client | None = None

    @property
    def name(self) -> str | None:
        return None if self.client is None else self.client.name


def caller_of(request: web.Request) -> Caller:
    """The caller of a ``/refdb`` request, as the authentication middleware identified it."""
    return Caller(client_of(request))


def check_push(caller: Caller, dataset: Dataset) -> None:
    """Refuse a push by anyone but the owner."""
    if caller.name is not None and caller.name != dataset.owner:
        raise Forbidden(f"client {caller.name!r} may not push to dataset {dataset.name!r}; "
                        f"only its owner {dataset.owner!r} may", detail=dataset.name)


def check_query(caller: Caller, dataset: Dataset) -> None:
    """Refuse a query by anyone but a reader or the owner."""
    if caller.name is not None and caller.name != dataset.owner and caller.name not in dataset.readers:
        raise Forbidden(f"client {caller.name!r} may not query dataset {dataset.name!r}; "
                        "it is not one of its readers", detail=dataset.name)
