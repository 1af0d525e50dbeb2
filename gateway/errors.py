"""The gateway's exception tree; every failure a client can cause is one of these.

Each leaf knows the SOAP fault it becomes (``fault`` is the SOAP 1.1 code,
mapped to Sender/Receiver for SOAP 1.2), the ``code`` of the
``<g:Error code="…"/>`` detail element (SPEC.md "Gateway faults") and the
HTTP status of the fault response::

    GatewayError
    ├── ConfigError(ValueError)                     endpoints.yaml is invalid
    │   └── ConfigUnreadable(OSError)               … or cannot be read at all
    ├── ClientFault                                 the caller must change something
    │   ├── MalformedMessage(ValueError)            400
    │   ├── UnsupportedMediaType(ValueError)        415
    │   ├── MessageTooLarge(ValueError)             413
    │   ├── RequestTimeout(TimeoutError)            408
    │   ├── UnknownDestination(LookupError)         404
    │   ├── Unauthorized(PermissionError)           401
    │   ├── Forbidden(PermissionError)              403
    │   ├── InvalidSignature(ValueError)            400  WS-Security signature missing or wrong
    │   ├── Expired(ValueError)                     400  WS-Security Timestamp outside its window
    │   ├── Replay(ValueError)                      400  WS-Security signature seen before
    │   ├── DuplicateMessageId(ValueError)          500  JX: same messageId, other content
    │   ├── UnknownDocument(LookupError)            500  JX: confirm of an id not stored
    │   ├── UnsafeFileName(ValueError)              400  (file transfer)
    │   ├── ChecksumMismatch(ValueError)            400  (file transfer)
    │   ├── ZipBomb(ValueError)                     413  (file transfer)
    │   ├── SenderMismatch(PermissionError)         409  (file transfer: another sender's file)
    │   └── TooManyRequests(RuntimeError)           429  over gateway.limits.client_rate
    │       └── LoginThrottled                      429  too many failed logins from the address
    └── ServerFault                                 the gateway or its upstream failed
        ├── RoutingLoop(RuntimeError)               500
        ├── UpstreamError
        │   ├── EndpointUnavailable(ConnectionError)  500
        │   ├── EndpointTimeout(TimeoutError)       500
        │   └── EndpointBusy(TimeoutError)          503  endpoint at max_concurrent past queue_timeout
        ├── DocumentStoreError(RuntimeError)        500  JX: the document store failed
        │   └── DocumentCorrupt                     500  stored content fails authentication (tampered)
        ├── KeyUnavailable(RuntimeError)            500  a data or master key is missing or destroyed
        ├── StorageFailed(OSError)                  500  (file transfer: the receiver's disk)
        ├── QuotaExceeded(RuntimeError)             507  JX: a receiver's pending documents are at their quota
        ├── InsufficientStorage(RuntimeError)       503  the data disk is below gateway.min_free_bytes
        └── GatewayBusy(RuntimeError)               503  gateway.limits.max_connections reached
            └── LoginBusy                           503  the password-check pool is full

    Reference DB (refdb/, SPEC.md capability F):
    ClientFault
    ├── UnknownDataset(LookupError)                 404   no such dataset declared
    ├── UnknownPush(LookupError)                    404   no open push with that id
    ├── InvalidRecord(ValueError)                   400   a value does not fit its column
    ├── InvalidRequest(ValueError)                  400   a refdb request is incomplete or wrong
    └── VersionChanged                              409   the dataset moved on while paging
    ServerFault
    └── RefdbUnavailable(RuntimeError)              503   the reference DB store failed

    Send/receive log, stores (gateway/logs/, gateway/store.py):
    ServerFault
    ├── JournalUnavailable(RuntimeError)            503   the log store cannot take or give records
    ├── WriterError(RuntimeError)                   503   the writer process could not commit a batch
    ├── ReplayStoreUnavailable(RuntimeError)        503   the replay records cannot be read or written
    └── StoreUnavailable(RuntimeError)              503   the store cannot be reached
    GatewayError
    └── ArchiveUnreadable(ValueError)                     a log archive file is missing or malformed

    Command-line programs (their errors end a command with a message, never a traceback):
    GatewayError
    └── CommandError                                ``exit_code`` 1 (the job failed) or 2 (bad usage)
        ├── UsageError(ValueError)                  an option, argument or listen address is unusable
        ├── PollError                               ``bmrgw poll`` cannot go on
        │   └── RoundFailure                        one step of a poll round failed, by kind
        │                                           (defined beside its kinds in gateway/jx/failure.py)
        ├── SendError                               ``bmrgw send`` did not complete (carries its exit code)
        ├── RemoteFault                             a gateway answered a refdb request with a fault
        └── FileError(ValueError)                   a records file cannot be read (``bmrgw refdb push``)

Private signals that never leave their package are not part of the tree: a
poll round's ``Stopped``, refdb's ``BadValue``/``FieldError`` (turned into
``InvalidRecord``), ``_Slow`` and ``DriverIntegrityError`` (turned into a
duplicate-key ``InvalidRecord``), and the demo backend's ``_DemoFault``.

Errors carry structured fields (``destination``, ``endpoint``, ``detail``)
so that the log and the SOAP fault render them without parsing messages.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "GatewayError", "ConfigError", "ConfigUnreadable", "ClientFault", "MalformedMessage", "UnsupportedMediaType",
    "MessageTooLarge", "RequestTimeout", "UnknownDestination", "Unauthorized", "Forbidden", "InvalidSignature",
    "Expired", "Replay", "ServerFault", "RoutingLoop", "UpstreamError", "EndpointUnavailable", "EndpointTimeout",
    "TooManyRequests", "EndpointBusy", "GatewayBusy", "UnknownDataset", "UnknownPush", "InvalidRecord",
    "InvalidRequest", "VersionChanged", "RefdbUnavailable", "DuplicateMessageId", "UnknownDocument",
    "DocumentStoreError", "UnsafeFileName", "ChecksumMismatch", "ZipBomb", "SenderMismatch", "StorageFailed",
    "JournalUnavailable", "WriterError", "ReplayStoreUnavailable", "StoreUnavailable", "ArchiveUnreadable",
    "CommandError", "UsageError", "PollError", "SendError", "RemoteFault", "FileError",
    "LoginThrottled", "LoginBusy", "QuotaExceeded", "InsufficientStorage", "DocumentCorrupt", "KeyUnavailable",
]


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""

    code: ClassVar[str] = "GatewayError"
    fault: ClassVar[str] = "Server"
    http_status: ClassVar[int] = 500

    def __init__(
        self,
        reason: str,
        *,
        destination: str | None = None,
        endpoint: str | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.destination = destination
        self.endpoint = endpoint
        self.detail = detail

    def fields(self) -> dict[str, str]:
        """The structured fields that are set, for the fault detail and the log."""
        found = {"destination": self.destination, "endpoint": self.endpoint, "detail": self.detail}
        return {k: v for k, v in found.items() if v is not None}


class ConfigError(GatewayError, ValueError):
    """Raised when endpoints.yaml (or an edit of it) is invalid."""

    code = "ConfigError"


class ConfigUnreadable(ConfigError, OSError):
    """Raised when the config file cannot be read at all (missing, not permitted): not invalid, absent."""


class ClientFault(GatewayError):
    """Base of faults the caller caused (SOAP 1.1 ``Client``, 1.2 ``Sender``)."""

    fault = "Client"
    http_status = 400


class MalformedMessage(ClientFault, ValueError):
    """Raised when the request is not a well-formed, acceptable SOAP envelope."""

    code = "MalformedMessage"


class UnsupportedMediaType(ClientFault, ValueError):
    """Raised when the Content-Type is neither SOAP 1.1 nor SOAP 1.2."""

    code = "MalformedMessage"
    http_status = 415


class MessageTooLarge(ClientFault, ValueError):
    """Raised when the body exceeds ``gateway.max_message_bytes``."""

    code = "MessageTooLarge"
    http_status = 413


class RequestTimeout(ClientFault, TimeoutError):
    """Raised when the caller pauses longer than ``gateway.client_timeout`` while sending."""

    code = "RequestTimeout"
    http_status = 408


class UnknownDestination(ClientFault, LookupError):
    """Raised when no endpoint, peer or fallback peer serves the destination name."""

    code = "UnknownDestination"
    http_status = 404


class Unauthorized(ClientFault, PermissionError):
    """Raised when ``clients`` are configured and the caller did not prove who it is."""

    code = "Unauthorized"
    http_status = 401


class Forbidden(ClientFault, PermissionError):
    """Raised when an authenticated client asks for something its ``clients`` entry does not allow."""

    code = "Forbidden"
    http_status = 403


class ServerFault(GatewayError):
    """Base of faults on the gateway's side (SOAP 1.1 ``Server``, 1.2 ``Receiver``)."""


class RoutingLoop(ServerFault, RuntimeError):
    """Raised when the message already passed this gateway or too many gateways."""

    code = "RoutingLoop"


class UpstreamError(ServerFault):
    """Base of failures talking to an endpoint or peer gateway."""


class EndpointUnavailable(UpstreamError, ConnectionError):
    """Raised when the endpoint refuses or resets the connection before answering."""

    code = "EndpointUnavailable"


class EndpointTimeout(UpstreamError, TimeoutError):
    """Raised when the endpoint does not answer within its timeout."""

    code = "EndpointTimeout"


class InvalidSignature(ClientFault, ValueError):
    """Raised when a message that must be WS-Security signed is not, or its signature does not verify."""

    code = "InvalidSignature"


class Expired(ClientFault, ValueError):
    """Raised when a signed message's wsu:Timestamp is outside the allowed clock skew or lifetime."""

    code = "Expired"


class Replay(ClientFault, ValueError):
    """Raised when a signature value was already accepted within its validity (a replayed message)."""

    code = "Replay"


# -- reference DB --------------------------------------------------------------

class UnknownDataset(ClientFault, LookupError):
    """Raised when a refdb request names a dataset that endpoints.yaml does not declare."""

    code = "UnknownDataset"
    http_status = 404


class UnknownPush(ClientFault, LookupError):
    """Raised when a refdb push id is unknown, already committed, aborted or failed."""

    code = "UnknownPush"
    http_status = 404


class InvalidRecord(ClientFault, ValueError):
    """Raised when a pushed record has an unknown field or a value that does not fit its column."""

    code = "InvalidRecord"

    def __init__(self, reason: str, *, record: int | None = None, field: str | None = None,
                 detail: str | None = None) -> None:
        super().__init__(reason, detail=detail)
        self.record = record
        self.field = field

    def fields(self) -> dict[str, str]:
        found = super().fields()
        if self.record is not None:
            found["record"] = str(self.record)
        if self.field is not None:
            found["field"] = self.field
        return found


class InvalidRequest(ClientFault, ValueError):
    """Raised when a refdb request lacks an element or has a value it cannot use (mode, filter, limit)."""

    code = "InvalidRequest"


class VersionChanged(ClientFault):
    """Raised when a paged Query or Changes asks for a version the dataset has moved past."""

    code = "VersionChanged"
    http_status = 409


class RefdbUnavailable(ServerFault, RuntimeError):
    """Raised when the reference DB store cannot be read or written."""

    code = "RefdbUnavailable"
    http_status = 503

# -- JX polling relay -------------------------------------------------------------

class DuplicateMessageId(ClientFault, ValueError):
    """Raised when a JX PutDocument reuses a stored messageId with different content."""

    code = "DuplicateMessageId"
    http_status = 500


class UnknownDocument(ClientFault, LookupError):
    """Raised when a JX ConfirmDocument names no stored document of that sender and receiver."""

    code = "UnknownDocument"
    http_status = 500


class DocumentStoreError(ServerFault, RuntimeError):
    """Raised when the JX document store (database or blob files) cannot do its work."""

    code = "StoreUnavailable"


class DocumentCorrupt(DocumentStoreError):
    """Raised when sealed content fails authentication: altered, reordered, cut short or moved."""

    code = "DocumentCorrupt"


class KeyUnavailable(ServerFault, RuntimeError):
    """Raised when content is sealed under a key this gateway cannot have: destroyed, or another master key."""

    code = "KeyUnavailable"


class UnsafeFileName(ClientFault, ValueError):
    """Raised when a transferred file's name is a path, hidden, reserved or has control characters."""

    code = "UnsafeFileName"


class ChecksumMismatch(ClientFault, ValueError):
    """Raised when a file part or a reassembled file does not match its declared SHA-256 or size."""

    code = "ChecksumMismatch"


class SenderMismatch(ClientFault, PermissionError):
    """Raised when a file transfer would replace, or add to, a file another sender published or started."""

    code = "SenderMismatch"
    http_status = 409


class ZipBomb(ClientFault, ValueError):
    """Raised when a zipped file inflates beyond its declared size, the size limit or the ratio limit."""

    code = "ZipBomb"
    http_status = 413


class StorageFailed(ServerFault, OSError):
    """Raised when a receiving AP cannot write a file part or publish a file (disk full, permissions)."""

    code = "StorageFailed"


# -- resilience (README "Resilience"): limits ---------------------------------------


class TooManyRequests(ClientFault, RuntimeError):
    """Raised when a client sends more requests per second than ``gateway.limits.client_rate``."""

    code = "TooManyRequests"
    http_status = 429


class EndpointBusy(UpstreamError, TimeoutError):
    """Raised when an endpoint stays at its ``max_concurrent`` requests for its whole ``queue_timeout``."""

    code = "EndpointBusy"
    http_status = 503


class GatewayBusy(ServerFault, RuntimeError):
    """Raised when a gateway process already holds ``gateway.limits.max_connections`` connections."""

    code = "GatewayBusy"
    http_status = 503


# -- the send/receive log and the stores ---------------------------------------

class JournalUnavailable(ServerFault, RuntimeError):
    """Raised when the log store cannot take or give records (queue full, store down)."""

    code = "LogUnavailable"
    http_status = 503


class WriterError(ServerFault, RuntimeError):
    """Raised when the writer process could not commit a batch; ``transient`` says whether to retry."""

    code = "LogUnavailable"

    def __init__(self, reason: str, *, transient: bool) -> None:
        super().__init__(reason)
        self.transient = transient


class ReplayStoreUnavailable(ServerFault, RuntimeError):
    """Raised when the replay records cannot be read or written (store down)."""

    code = "StoreUnavailable"
    http_status = 503


class StoreUnavailable(ServerFault, RuntimeError):
    """Raised when the store cannot be reached; carries the reason for /healthz."""

    code = "StoreUnavailable"
    http_status = 503


class ArchiveUnreadable(GatewayError, ValueError):
    """Raised when a log archive file is missing or not a well-formed archive."""

    code = "ArchiveUnreadable"


# -- command-line programs -------------------------------------------------------

class CommandError(GatewayError):
    """Base of the errors that end a command-line program (``bmrgw poll``, ``send``, ``refdb``)."""

    exit_code: int = 1


class UsageError(CommandError, ValueError):
    """Raised when an option, argument or address is unusable (URL without a scheme, port in use); exit 2."""

    exit_code = 2


class PollError(CommandError):
    """Raised when the poll client cannot go on (bad options, gateway unreachable with --once)."""

    code = "PollError"


class SendError(CommandError):
    """Raised when a send did not complete, with the exit code it maps to."""

    code = "SendError"

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class RemoteFault(CommandError):
    """Raised when the gateway answers a refdb request with a SOAP fault (or not at all)."""

    def __init__(self, reason: str, *, code: str = "", http_status: int = 0,
                 attributes: dict[str, str] | None = None) -> None:
        super().__init__(reason, detail=code or None)
        self.remote_code = code
        self.status = http_status
        self.attributes = attributes or {}


class FileError(CommandError, ValueError):
    """Raised for a file that cannot be read as records; the message names the file and line."""


# -- hostile input (issue 17): logins, quotas, disk space ------------------------------


class LoginThrottled(TooManyRequests):
    """Raised when an address failed so many password checks lately that its next one is not even tried yet."""

    def __init__(self, reason: str, *, retry_after: float) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class LoginBusy(GatewayBusy):
    """Raised when the password-check pool already holds as many checks as it may queue (a login flood)."""


class QuotaExceeded(ServerFault, RuntimeError):
    """Raised when a JX receiver id already has ``gateway.jx.max_pending_documents`` or ``max_pending_bytes`` waiting.

    A Server fault: the message itself is fine and succeeds once the receiver has polled (SOAP 1.2
    ``Receiver``).  HTTP 507 (RFC 4918: the server cannot store the representation; temporary), as
    WebDAV servers answer a full quota; ``/jx`` answers it with 500 like every JX fault.
    """

    code = "QuotaExceeded"
    http_status = 507


class InsufficientStorage(ServerFault, RuntimeError):
    """Raised when storing would leave the data disk with less than ``gateway.min_free_bytes`` free."""

    code = "InsufficientStorage"
    http_status = 503
