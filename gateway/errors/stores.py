"""Faults of the stores: the reference DB, JX documents and keys, file transfer, the send/receive log."""

from __future__ import annotations

from .base import GatewayError, ClientFault, ServerFault

__all__ = [
    "UnknownDataset", "UnknownPush", "InvalidRecord", "InvalidRequest", "VersionChanged",
    "RefdbUnavailable", "DuplicateMessageId", "UnknownDocument", "DocumentStoreError", "DocumentCorrupt",
    "KeyUnavailable", "UnsafeFileName", "ChecksumMismatch", "SenderMismatch", "ZipBomb", "RecordLengthMismatch", "StorageFailed",
    "QuotaExceeded", "JournalUnavailable", "WriterError", "ReplayStoreUnavailable", "StoreUnavailable",
    "ArchiveUnreadable",
]


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


class RecordLengthMismatch(ClientFault, ValueError):
    """Raised when a fixed-length file (``--record-bytes``) holds a record of another length in bytes."""

    code = "RecordLengthMismatch"
    http_status = 422

    def __init__(self, reason: str, *, record: int, length: int, expected: int) -> None:
        super().__init__(reason, detail=f"record {record}: {length} bytes, not {expected}")
        self.record = record
        self.length = length
        self.expected = expected


class StorageFailed(ServerFault, OSError):
    """Raised when a receiving AP cannot write a file part or publish a file (disk full, permissions)."""

    code = "StorageFailed"


class QuotaExceeded(ServerFault, RuntimeError):
    """Raised when a JX receiver id already has ``gateway.jx.max_pending_documents`` or ``max_pending_bytes`` waiting.

    A Server fault: the message itself is fine and succeeds once the receiver has polled (SOAP 1.2
    ``Receiver``).  HTTP 507 (RFC 4918: the server cannot store the representation; temporary), as
    WebDAV servers answer a full quota; ``/jx`` answers it with 500 like every JX fault.
    """

    code = "QuotaExceeded"
    http_status = 507


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
