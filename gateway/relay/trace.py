"""What one relayed exchange did, collected as it happens: its metrics label and its two log records.

The relay (:mod:`gateway.relay.handler`) fills a :class:`Trace` while the
message passes; :meth:`Trace.exchange` turns it into the send/receive log's
:class:`~gateway.logs.records.RelayExchange` without a Python frame per field.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

from gateway.errors import (
    MalformedMessage,
)
from gateway.ids import id_problem, new_message_id
from gateway.logs.clock import Reading
from gateway.logs.records import RelayExchange, text_problem
from routing.table import Route

__all__ = ["Exchange", "Trace", "check_loggable", "echoable_message_id"]


@dataclass(frozen=True, kw_only=True)
class Exchange:
    """What the relay learned about one request before forwarding it."""

    route: Route
    message_id: str
    via: str


@dataclass(eq=False)
class Trace:
    """What one exchange did, collected as it happens, for the metrics and the log."""

    arrived: Reading
    started: float
    message_id: str | None = None
    client: str | None = None
    """The authenticated client's name (``clients`` in endpoints.yaml)."""
    sender: str | None = None
    destination: str | None = None
    endpoint: str | None = None
    """The URL the message went to."""
    label: str = "-"
    """Metrics label: a name from the route table, never raw client input."""
    request_bytes: int = 0
    request_digest: hashlib._Hash = field(default_factory=hashlib.sha256)
    forwarded: bool = False
    forwarded_bytes: int | None = None
    """Size of the body sent upstream when the gateway changed it (WS-Security signing)."""
    answered: float | None = None
    """perf_counter() when the endpoint's answer began."""
    response_in: int = 0
    response_out: int = 0
    response_digest: hashlib._Hash = field(default_factory=hashlib.sha256)
    http_status: int | None = None
    fault_code: str | None = None
    logged: bool = False
    """The exchange's records were handed to the log (before the last bytes of a streamed answer)."""
    status: str = "ok"

    def took_request(self, chunk: bytes) -> None:
        self.request_bytes += len(chunk)
        self.request_digest.update(chunk)

    def sent_response(self, chunk: bytes, *, relayed: bool = True) -> None:
        self.response_out += len(chunk)
        if relayed:
            self.response_in += len(chunk)
        self.response_digest.update(chunk)

    def exchange(self, ended: Reading) -> RelayExchange:
        """What the log keeps of this exchange (its request and its response record)."""
        now = time.perf_counter()
        return RelayExchange._make((  # _make is tuple.__new__: no Python frame for 23 arguments
            *self.arrived, *ended, "ok" if self.forwarded else self.status, self.status, self.message_id,
            self.sender, self.destination, self.endpoint, self.client,
            self.request_bytes, (self.forwarded_bytes or self.request_bytes) if self.forwarded else 0,
            self.request_digest.hexdigest(), 1000 * ((self.answered or now) - self.started),
            self.response_in, self.response_out, self.response_digest.hexdigest(), 1000 * (now - self.started),
            self.http_status, self.fault_code))


def echoable_message_id(value: str | None) -> str | None:
    """``value`` (the caller's ``X-Message-Id``) when an answer may carry it back — UTF-8 text of at most
    256 characters with no control or bidi character — else ``None``: a fault the gateway answers before
    the relay has checked the id leaves a bad one out rather than failing to write it."""
    if value is None or text_problem("message_id", value) or id_problem(value):
        return None
    return value


def check_loggable(what: str, field: str, value: str | None, trace: Trace) -> None:
    """Refuse a name the client chose that the log record could not hold (the fault is logged without it)."""
    if value is None:
        return
    problem = text_problem(field, value) or (id_problem(value) if field == "message_id" else None)
    if problem:
        if field == "message_id":
            trace.message_id = new_message_id()  # the fault and its records carry a fresh one
        raise MalformedMessage(f"{what} {problem}")
