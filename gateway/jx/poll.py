"""``bmrgw poll``: the city hall's JX polling client (SPEC.md "CLI", capability (E)).

A city hall behind a firewall that forbids inbound calls runs this client.
Each round it

1. drains its mailbox: GetDocument until ``false``; each document is written
   to ``--out`` atomically (temporary file, fsync, rename, folder fsync) under
   a safe name made from its messageId, recorded as received, and only then
   confirmed with ConfirmDocument — so a crash at any point at worst gets the
   document handed out again, and the same messageId is never written twice,
   across restarts too (the record lives in ``--state``);
2. uploads every file placed in ``--outbox`` with PutDocument and moves it to
   ``<outbox>/sent/`` only after the gateway answered ``true``.  The messageId
   is derived from the sender, the file name and its SHA-256, so a retry after
   a lost answer is recognised by the gateway as the same document.

It sleeps ``--interval`` seconds (±20 % jitter, so many city halls do not
poll in step) between rounds, and backs off (up to a minute) while the
gateway is unreachable.  ``--once`` does one round and exits.

GetDocument is read as it streams in (:mod:`gateway.jx.fetch`): the document
goes to a hidden temporary file in ``--out`` base64-decoded as it arrives,
is verified, and only then renamed — memory stays flat whatever its size.
PutDocument and ConfirmDocument go through zeep, built from the shipped
``jx2007.wsdl``; no WSDL is fetched from the server.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import FrameType
from typing import Any

from gateway.errors import MalformedMessage, PollError

from ..ns import JX
from ..parser import PrologGuard
from .failure import Kind, RoundFailure
from .fetch import Fetched, get_document, message_header
from .files import fsync_dir, write_atomically

__all__ = ["PollOptions", "Poller", "add_poll_command", "safe_name"]

log = logging.getLogger("bmrgw.poll")

_BINDING = f"{{{JX}}}JXMSTransferSoap"
_MAX_BACKOFF = 60.0
_ONCE_ATTEMPTS = 3
_SENT, _FAILED = "sent", "failed"
_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


@dataclass(frozen=True, kw_only=True)
class PollOptions:
    server: str
    """The gateway's JX endpoint, e.g. ``http://dc-gw:8080/jx``."""
    receiver_id: str
    """Our JX id: documents addressed to it are fetched."""
    out: Path
    """Where received documents are written."""
    outbox: Path | None = None
    """Files placed here are uploaded."""
    sender_id: str | None = None
    """Our JX id as a sender (default: ``receiver_id``)."""
    send_to: str = "DC"
    """Receiver id of uploaded files."""
    format_type: str = "FILE"
    """formatType of uploaded files (documentType is the file name)."""
    interval: float = 30.0
    """Seconds between rounds (±20 % jitter)."""
    once: bool = False
    """Do one round, then exit."""
    state: Path | None = None
    """Where received messageIds are recorded (default: ``<out>/.bmrgw-poll``)."""
    timeout: float = 300.0
    """Seconds one SOAP call may take."""
    user: str | None = None
    password: str | None = None
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None


def safe_name(message_id: str) -> str:
    """A file name for a messageId: only ``[A-Za-z0-9._-]``, never hidden or a path; changed ids get a hash."""
    cleaned = "".join(ch if ch in _SAFE else "_" for ch in message_id).lstrip(".")[:160]
    if cleaned == message_id and cleaned:
        return cleaned
    return f"{cleaned or 'document'}-{hashlib.sha256(message_id.encode('utf-8')).hexdigest()[:16]}"


class Poller:
    """One polling client; :meth:`run` loops (or does one round with ``once``)."""

    def __init__(self, options: PollOptions, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.options = options
        self.sleep = sleep
        self.state = options.state or options.out / ".bmrgw-poll"
        self.received = self.state / "received"
        self.stopping = False
        self._service: Any = None
        self._http: Any = None

    # -- the loop ------------------------------------------------------------------

    def run(self) -> int:
        self._prepare()
        try:
            return self._loop()
        except Stopped:
            log.info("stopped")
            return 0

    def _loop(self) -> int:
        failures = 0
        while not self.stopping:
            try:
                got, sent = self.round()
            except _Unreachable as exc:
                failures += 1
                if self.options.once and failures >= _ONCE_ATTEMPTS:
                    raise PollError(f"gateway unreachable after {failures} attempts: {exc}") from exc
                delay = min(_MAX_BACKOFF, 2.0 ** (failures - 1)) * random.uniform(0.5, 1.0)
                log.warning("gateway unreachable (%s); retrying in %.1f s", exc, delay)
                self.sleep(delay)
                continue
            failures = 0
            if got or sent:
                log.info("round done: %d received, %d sent", got, sent)
            if self.options.once:
                return 0
            self.sleep(self.options.interval * random.uniform(0.8, 1.2))
        return 0

    def round(self) -> tuple[int, int]:
        """Drain the mailbox, then upload the outbox; returns (received, sent)."""
        got = self.drain()
        sent = self.upload() if self.options.outbox is not None else 0
        return got, sent

    def _prepare(self) -> None:
        for folder in (self.options.out, self.received):
            folder.mkdir(parents=True, exist_ok=True)
        if self.options.outbox is not None:
            (self.options.outbox / _SENT).mkdir(parents=True, exist_ok=True)
        for stale in self.options.out.glob(".*.part"):  # a document half-received when we last stopped
            stale.unlink(missing_ok=True)

    # -- receiving -----------------------------------------------------------------

    def drain(self) -> int:
        count = 0
        while not self.stopping:
            header = message_header(self.options.sender_id or self.options.receiver_id)
            try:
                fetched = get_document(self._session(), self.options.server, self.options.receiver_id, header,
                                       folder=self.options.out, timeout=self.options.timeout)
            except RoundFailure as exc:
                if exc.kind is Kind.NETWORK:
                    raise _Unreachable(exc.reason) from exc
                raise
            if fetched is None:
                return count
            self._receive(fetched)
            count += 1
        return count

    def _receive(self, fetched: Fetched) -> None:
        """Move the verified document to its name, record it, and only then confirm it."""
        message_id, spool = fetched.field("messageId"), fetched.spool
        marker = self.received / hashlib.sha256(message_id.encode("utf-8")).hexdigest()
        if marker.exists():
            spool.discard()
            log.info("document %s was received before; confirming again", message_id)
        else:
            path = self.options.out / safe_name(message_id)
            try:
                os.replace(spool.path, path)
            except BaseException:
                spool.discard()
                raise
            fsync_dir(path.parent)
            write_atomically(marker, [message_id.encode("utf-8")])
            log.info("received %s (%d bytes, from %s) -> %s", message_id, spool.size, fetched.field("senderId"),
                     path)
        answer = self._confirm(message_id, fetched.field("senderId"))
        log.info("confirmed %s%s", message_id, "" if answer else " (it was confirmed already)")

    def _confirm(self, message_id: str, sender_id: str) -> bool:
        import zeep.exceptions

        try:
            answer = self._call("ConfirmDocument", messageId=message_id, senderId=sender_id,
                                receiverId=self.options.receiver_id)
        except zeep.exceptions.Fault as fault:
            log.error("the gateway refused to confirm %s: %s", message_id, fault.message)
            return False
        return bool(answer["body"]["ConfirmDocumentResult"])

    # -- sending -------------------------------------------------------------------

    def upload(self) -> int:
        import zeep.exceptions

        assert self.options.outbox is not None
        count = 0
        for path in _ready_files(self.options.outbox):
            data = path.read_bytes()
            message_id = self._outbox_id(path.name, data)
            try:
                answer = self._call("PutDocument", messageId=message_id, data=data,
                                    senderId=self.options.sender_id or self.options.receiver_id,
                                    receiverId=self.options.send_to, formatType=self.options.format_type,
                                    documentType=path.name, compressType="")
            except zeep.exceptions.Fault as fault:
                log.error("the gateway refused %s (%s); moved to %s/", path.name, fault.message, _FAILED)
                _move(path, self.options.outbox / _FAILED)
                continue
            if answer["body"]["PutDocumentResult"]:
                _move(path, self.options.outbox / _SENT)
                log.info("sent %s as %s (%d bytes) to %s", path.name, message_id, len(data), self.options.send_to)
                count += 1
            else:
                log.warning("the gateway did not accept %s; it stays in the outbox", path.name)
        return count

    def _outbox_id(self, name: str, data: bytes) -> str:
        sender = self.options.sender_id or self.options.receiver_id
        digest = hashlib.sha256(data).hexdigest()
        return f"{sender}-{uuid.uuid5(uuid.NAMESPACE_URL, f'{sender}/{name}/{digest}')}"

    # -- SOAP ------------------------------------------------------------------------

    def _call(self, operation: str, **values: Any) -> Any:
        import requests
        import zeep.exceptions

        service = self._client()
        header = message_header(self.options.sender_id or self.options.receiver_id)
        try:
            return getattr(service, operation)(**values, _soapheaders={"MessageHeader": header})
        except (requests.ConnectionError, requests.Timeout, zeep.exceptions.TransportError) as exc:
            raise _Unreachable(f"{operation}: {_short(exc)}") from exc

    def _session(self) -> Any:
        """One HTTP session (credentials, client certificate, CA) for zeep and the streamed GetDocument."""
        if self._http is None:
            import requests

            session = requests.Session()
            o = self.options
            if o.user is not None:
                session.auth = (o.user, o.password or "")
            if o.cert is not None:
                session.cert = (str(o.cert), str(o.key)) if o.key is not None else str(o.cert)
            if o.ca is not None:
                session.verify = str(o.ca)
            self._http = session
        return self._http

    def _client(self) -> Any:
        if self._service is None:
            import zeep

            transport = _guarded_transport(session=self._session(), timeout=30, operation_timeout=self.options.timeout)
            wsdl = str(resources.files("schemas").joinpath("jx2007.wsdl"))
            settings = zeep.Settings(forbid_dtd=True, forbid_entities=True, forbid_external=True)
            client = zeep.Client(wsdl, transport=transport, settings=settings)  # type: ignore[no-untyped-call]
            self._service = client.create_service(_BINDING, self.options.server)  # type: ignore[no-untyped-call]
        return self._service


def _guarded_transport(**options: Any) -> Any:
    """zeep's transport, but an answer reaches zeep's parser only once :class:`PrologGuard` has read it.

    zeep refuses a DTD only after parsing it, and its resolver leaves ``file:``
    URLs to libxml2: ``forbid_dtd`` alone does not stop a DOCTYPE naming
    ``/dev/zero`` from hanging the client.  A JX answer is plain XML, never
    multipart.
    """
    import zeep.exceptions
    import zeep.transports

    class Guarded(zeep.transports.Transport):
        def post_xml(self, address: str, envelope: Any, headers: dict[str, str]) -> Any:
            response = super().post_xml(address, envelope, headers)  # type: ignore[no-untyped-call]
            try:
                if response.headers.get("Content-Type", "").lower().startswith("multipart/"):
                    raise MalformedMessage("a JX answer is not multipart")
                PrologGuard.check(response.content)
            except MalformedMessage as exc:
                raise zeep.exceptions.TransportError(  # type: ignore[no-untyped-call]
                    f"refused answer: {exc}", status_code=response.status_code) from exc
            return response

    return Guarded(**options)  # type: ignore[no-untyped-call]


class Stopped(Exception):
    """Raised by the SIGTERM handler: every step is safe to break off (atomic writes, idempotent puts)."""


class _Unreachable(Exception):
    """The gateway did not answer (connection refused, timeout, an HTTP error that is not a fault)."""


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _ready_files(outbox: Path) -> list[Path]:
    """Files to upload, oldest first: not hidden, not temporary, not in sent/ or failed/."""
    found = [p for p in outbox.iterdir() if p.is_file() and not p.name.startswith(".")
             and not p.name.endswith((".tmp", ".part"))]
    return sorted(found, key=lambda p: (p.stat().st_mtime_ns, p.name))


def _move(path: Path, folder: Path) -> None:
    folder.mkdir(exist_ok=True)
    target = folder / path.name
    n = 1
    while target.exists():
        target = folder / f"{path.name}.{n}"
        n += 1
    os.replace(path, target)
    fsync_dir(folder)


# -- the command ---------------------------------------------------------------------

def add_poll_command(commands: Any, config_option: Callable[[Any], None]) -> None:
    """Register ``bmrgw poll``."""
    p = commands.add_parser(
        "poll", help="the city hall's JX polling client: fetch documents, upload the outbox",
        description="Poll a gateway's JX server for documents addressed to --receiver-id, write each to "
        "--out (atomically, named after its messageId) and only then confirm it; upload the files placed "
        "in --outbox and move them to OUTBOX/sent/ once the gateway accepted them. Runs until stopped "
        "(Ctrl-C, SIGTERM), or one round with --once.",
    )
    p.add_argument("--server", required=True, metavar="URL", help="the gateway's JX URL, e.g. http://gw:8080/jx")
    p.add_argument("--receiver-id", required=True, metavar="ID", help="our JX id (documents for it are fetched)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="where received documents go")
    p.add_argument("--outbox", type=Path, metavar="DIR", help="files placed here are uploaded")
    p.add_argument("--sender-id", metavar="ID", help="our JX id as a sender (default: --receiver-id)")
    p.add_argument("--send-to", default="DC", metavar="ID", help="receiver id of uploaded files (default: DC)")
    p.add_argument("--format-type", default="FILE", metavar="T", help="formatType of uploads (default: FILE)")
    p.add_argument("--interval", type=_seconds, default=30.0, metavar="SECONDS",
                   help="seconds between polls, ±20%% jitter (default: 30)")
    p.add_argument("--once", action="store_true", help="one round (drain, upload), then exit 0")
    p.add_argument("--state", type=Path, metavar="DIR", help="received-id records (default: OUT/.bmrgw-poll)")
    p.add_argument("--user", help="HTTP Basic user")
    p.add_argument("--password", help="HTTP Basic password (default: $BMRGW_PASSWORD)")
    p.add_argument("--cert", type=Path, metavar="PEM", help="client certificate (mutual TLS)")
    p.add_argument("--key", type=Path, metavar="PEM", help="its private key")
    p.add_argument("--ca", type=Path, metavar="PEM", help="CA certificate that signed the gateway's certificate")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(run=_poll)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.05 <= value <= 86400:
        import argparse
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds between 0.05 and 86400")
    return value


def _poll(args: Any) -> int:
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("zeep").setLevel(logging.WARNING)
    if args.outbox is not None and args.outbox.resolve() == args.out.resolve():
        raise PollError("--outbox and --out must be different folders")
    options = PollOptions(
        server=args.server, receiver_id=args.receiver_id, out=args.out, outbox=args.outbox,
        sender_id=args.sender_id, send_to=args.send_to, format_type=args.format_type, interval=args.interval,
        once=args.once, state=args.state, user=args.user,
        password=args.password if args.password is not None else os.environ.get("BMRGW_PASSWORD"),
        cert=args.cert, key=args.key, ca=args.ca,
    )
    def stop(signum: int, frame: FrameType | None) -> None:
        raise Stopped

    signal.signal(signal.SIGTERM, stop)
    return Poller(options).run()
