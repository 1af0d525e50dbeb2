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
    │   ├── MethodNotAllowed(ValueError)            405  a method the path does not take (/api)
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
    │   ├── RecordLengthMismatch(ValueError)        422  (file transfer: a fixed-length record of another length)
    │   ├── UnmappableCharacter(ValueError)         422  no mapping in the endpoint's character profile
    │   ├── SignedNotConvertible(ValueError)        422  a signed message to a converting endpoint without wss.sign
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
        ├── FileError(ValueError)                   a records file cannot be read (``bmrgw refdb push``)
        └── CertificateRefused(ValueError)          ``bmrgw pki install``: wrong key (3), broken chain (4),
                                                    expired or not yet valid (5)

Private signals that never leave their package are not part of the tree: a
poll round's ``Stopped``, refdb's ``BadValue``/``FieldError`` (turned into
``InvalidRecord``), ``_Slow`` and ``DriverIntegrityError`` (turned into a
duplicate-key ``InvalidRecord``), and the demo backend's ``_DemoFault``.

The roots live in ``base.py``; the leaves in ``relay.py`` (a relayed message and its
limits), ``stores.py`` (refdb, JX, keys, file transfer, the log) and ``commands.py``
(command-line programs).  Import them from ``gateway.errors``.

Errors carry structured fields (``destination``, ``endpoint``, ``detail``)
so that the log and the SOAP fault render them without parsing messages.
"""

from __future__ import annotations

from .base import (
    GatewayError, ConfigError, ConfigUnreadable, ClientFault, ServerFault, UpstreamError, CommandError,
)
from .relay import (
    MalformedMessage, UnsupportedMediaType, MethodNotAllowed, MessageTooLarge, RequestTimeout, UnknownDestination,
    Unauthorized, Forbidden, RoutingLoop, EndpointUnavailable, EndpointTimeout, InvalidSignature, Expired,
    Replay, TooManyRequests, EndpointBusy, GatewayBusy, LoginThrottled, LoginBusy, InsufficientStorage, UnmappableCharacter,
    SignedNotConvertible,
)
from .stores import (
    UnknownDataset, UnknownPush, InvalidRecord, InvalidRequest, VersionChanged, RefdbUnavailable,
    DuplicateMessageId, UnknownDocument, DocumentStoreError, DocumentCorrupt, KeyUnavailable,
    UnsafeFileName, ChecksumMismatch, SenderMismatch, ZipBomb, RecordLengthMismatch, StorageFailed, QuotaExceeded,
    JournalUnavailable, WriterError, ReplayStoreUnavailable, StoreUnavailable, ArchiveUnreadable,
)
from .commands import UsageError, PollError, SendError, RemoteFault, FileError, CertificateRefused

__all__ = [
    "GatewayError",
    "ConfigError",
    "ConfigUnreadable",
    "ClientFault",
    "ServerFault",
    "UpstreamError",
    "CommandError",
    "MalformedMessage",
    "UnsupportedMediaType",
    "MethodNotAllowed",
    "MessageTooLarge",
    "RequestTimeout",
    "UnknownDestination",
    "Unauthorized",
    "Forbidden",
    "RoutingLoop",
    "EndpointUnavailable",
    "EndpointTimeout",
    "InvalidSignature",
    "Expired",
    "Replay",
    "TooManyRequests",
    "EndpointBusy",
    "GatewayBusy",
    "LoginThrottled",
    "LoginBusy",
    "InsufficientStorage",
    "UnmappableCharacter",
    "SignedNotConvertible",
    "UnknownDataset",
    "UnknownPush",
    "InvalidRecord",
    "InvalidRequest",
    "VersionChanged",
    "RefdbUnavailable",
    "DuplicateMessageId",
    "UnknownDocument",
    "DocumentStoreError",
    "DocumentCorrupt",
    "KeyUnavailable",
    "UnsafeFileName",
    "ChecksumMismatch",
    "SenderMismatch",
    "ZipBomb",
    "RecordLengthMismatch",
    "StorageFailed",
    "QuotaExceeded",
    "JournalUnavailable",
    "WriterError",
    "ReplayStoreUnavailable",
    "StoreUnavailable",
    "ArchiveUnreadable",
    "UsageError",
    "PollError",
    "SendError",
    "RemoteFault",
    "FileError",
    "CertificateRefused",
]
