"""What one ``bmrgw poll`` partner is: its server, ids, folders, timetable, hooks and compression.

Built from the command line (one partner) or from a ``poll.yaml``
(:mod:`gateway.jx.pollconfig`, any number of partners).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..ns import JX
from .client import Credentials
from .hooks import Hook
from .schedule import Every, Schedule

__all__ = ["PollOptions", "NAME_SOURCES"]

#: Which field names a received file: its messageId (default) or its documentType.
NAME_SOURCES = ("messageId", "documentType")


@dataclass(frozen=True, kw_only=True)
class PollOptions:
    """One partner of the polling client (every field but the first three has a safe default)."""

    server: str
    """The gateway's JX endpoint, e.g. ``http://dc-gw:8080/jx``."""
    receiver_id: str
    """Our JX id: documents addressed to it are fetched."""
    out: Path
    """Where received documents are written."""
    name: str = "poll"
    """The partner's name in the log and the round summary."""
    outbox: Path | None = None
    """Files placed here are uploaded."""
    sender_id: str | None = None
    """Our JX id as a sender (default: ``receiver_id``)."""
    send_to: str = "DC"
    """Receiver id of uploaded files."""
    format_type: str = "FILE"
    """formatType of uploaded files (documentType is the file name)."""
    schedule: Schedule = field(default_factory=lambda: Every(seconds=30.0))
    """When rounds run: every N seconds (±20 %), or at cron-like times."""
    once: bool = False
    """Do one round, then exit."""
    state: Path | None = None
    """Where received messageIds are recorded (default: ``<out>/.bmrgw-poll``)."""
    timeout: float = 300.0
    """Seconds one SOAP call may wait for the gateway (between two pieces of a streamed answer)."""
    credentials: Credentials = Credentials()
    """HTTP Basic user and password, client certificate, CA."""
    before: Hook | None = None
    """Run before each upload with the paths of the outbox files about to be sent; if it fails they are not sent."""
    after: Hook | None = None
    """Run after each round that received documents, with the paths of the files written."""
    compression: str = ""
    """Compress uploads: ``gzip`` or ``zip`` (sent as their ``compressType``), or ``""`` (none)."""
    decompress: bool = True
    """Decompress received documents whose ``compressType`` is gzip or zip (else save them as they came)."""
    max_document_bytes: int = 16 * 1024 ** 3
    """Largest document written after decompression (the zip-bomb limit, with a ratio of at most 200)."""
    names: str = "messageId"
    """Which field names a received file: ``messageId`` or ``documentType`` (see :data:`NAME_SOURCES`)."""
    namespace: str = JX
    """The JX namespace requests are written in: the published one, or the 2007 edition's hyphen-less
    variant for servers generated from such a WSDL copy (answers in either are read)."""
