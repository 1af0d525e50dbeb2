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
poll in step) between rounds.  Every failure (:mod:`gateway.jx.failure`:
network, HTTP, fault, parse, disk full, permission) is logged as what it is
and counted in the round's summary line; after a failed round the pause is at
least 1, 2, 4 … seconds (up to a minute), so nothing is retried in a tight
loop.  A document that could not be stored is not confirmed: the gateway
hands it out again after its lease.  ``--once`` does one round and exits 0,
or 1 if anything failed.  A refusal of our credentials or id stops the client
(exit 1): asking again cannot help.

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
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from gateway.errors import PollError
from gateway.terminal import http_url

from .client import Credentials, JxClient
from .failure import Kind, RoundFailure, storage_failure
from .fetch import Fetched
from .files import fsync_dir, write_atomically

__all__ = ["PollOptions", "Poller", "add_poll_command", "safe_name"]

log = logging.getLogger("bmrgw.poll")

_MAX_BACKOFF = 60.0
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
    """Seconds one SOAP call may wait for the gateway (between two pieces of a streamed answer)."""
    credentials: Credentials = Credentials()
    """HTTP Basic user and password, client certificate, CA."""


def safe_name(message_id: str) -> str:
    """A file name for a messageId: only ``[A-Za-z0-9._-]``, never hidden or a path; changed ids get a hash."""
    cleaned = "".join(ch if ch in _SAFE else "_" for ch in message_id).lstrip(".")[:160]
    if cleaned == message_id and cleaned:
        return cleaned
    return f"{cleaned or 'document'}-{hashlib.sha256(message_id.encode('utf-8')).hexdigest()[:16]}"


@dataclass(eq=False)
class Tally:
    """What one round did: the summary line, and whether ``--once`` exits 1."""

    received: int = 0
    sent: int = 0
    failures: Counter[Kind] = field(default_factory=Counter)

    def fail(self, failure: RoundFailure) -> None:
        self.failures[failure.kind] += 1
        log.error("%s failure: %s", failure.kind.value, failure.reason)

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def summary(self) -> str:
        line = f"round done: {self.received} received, {self.sent} sent"
        if self.failed:
            kinds = ", ".join(f"{n} {kind.value}" for kind, n in self.failures.most_common())
            line += f", {self.failed} failed ({kinds})"
        return line


class Poller:
    """One polling client; :meth:`run` loops (or does one round with ``once``)."""

    def __init__(self, options: PollOptions, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.options = options
        self.sleep = sleep
        self.state = options.state or options.out / ".bmrgw-poll"
        self.received = self.state / "received"
        self.stopping = False
        self.sender = options.sender_id or options.receiver_id
        self.client = JxClient(options.server, sender=self.sender, timeout=options.timeout,
                               credentials=options.credentials)

    # -- the loop ------------------------------------------------------------------

    def run(self) -> int:
        """Rounds until stopped; with ``once`` one round: 0 if nothing failed, else 1."""
        try:
            self._prepare()
            return self._loop()
        except Stopped:
            log.info("stopped")
            return 0
        except OSError as exc:
            raise storage_failure(exc, f"cannot prepare {exc.filename or 'the folders'}") from exc

    def _loop(self) -> int:
        failed_rounds = 0
        while not self.stopping:
            tally = self.round()
            if tally.received or tally.sent or tally.failed:
                (log.warning if tally.failed else log.info)("%s", tally.summary())
            if self.options.once:
                return 1 if tally.failed else 0
            failed_rounds = failed_rounds + 1 if tally.failed else 0
            self.sleep(self._pause(failed_rounds))
        return 0

    def _pause(self, failed_rounds: int) -> float:
        """The interval ±20 %; after failed rounds at least 1, 2, 4 … s (up to a minute), never a tight loop."""
        if not failed_rounds:
            return self.options.interval * random.uniform(0.8, 1.2)
        backoff = min(_MAX_BACKOFF, 2.0 ** (failed_rounds - 1))
        delay = max(self.options.interval, backoff) * random.uniform(0.5, 1.0)
        log.info("after %d failed round%s: next round in %.1f s", failed_rounds, "s" if failed_rounds > 1 else "",
                 delay)
        return delay

    def round(self) -> Tally:
        """Drain the mailbox, then upload the outbox; a fatal failure (refused credentials) ends the client."""
        tally = Tally()
        for step in (self.drain, self.upload):
            try:
                step(tally)
            except RoundFailure as failure:
                tally.fail(failure)
                if failure.fatal:
                    raise PollError(f"{failure.reason}; stopping (retrying cannot help)") from failure
        return tally

    def _prepare(self) -> None:
        for folder in (self.options.out, self.received):
            folder.mkdir(parents=True, exist_ok=True)
        if self.options.outbox is not None:
            (self.options.outbox / _SENT).mkdir(parents=True, exist_ok=True)
        for stale in self.options.out.glob(".*.part"):  # a document half-received when we last stopped
            stale.unlink(missing_ok=True)

    # -- receiving -----------------------------------------------------------------

    def drain(self, tally: Tally) -> None:
        """GetDocument until the mailbox is empty; the first failure ends the drain (raised)."""
        while not self.stopping:
            _check_writable(self.options.out)  # before a document is taken out of the mailbox
            fetched = self.client.get_document(self.options.receiver_id, self.options.out)
            if fetched is None:
                return
            self._store(fetched)
            tally.received += 1
            self._confirm(fetched)

    def _store(self, fetched: Fetched) -> None:
        """Move the verified document to its name and record it (not confirmed if this fails)."""
        message_id, spool = fetched.field("messageId"), fetched.spool
        marker = self.received / hashlib.sha256(message_id.encode("utf-8")).hexdigest()
        if marker.exists():
            spool.discard()
            log.info("document %s was received before; confirming again", message_id)
            return
        path = self.options.out / safe_name(message_id)
        try:
            os.replace(spool.path, path)
            fsync_dir(path.parent)
            write_atomically(marker, [message_id.encode("utf-8")])
        except OSError as exc:
            spool.discard()
            raise storage_failure(exc, f"cannot store {message_id} in {path.parent}") from exc
        log.info("received %s (%d bytes, from %s) -> %s", message_id, spool.size, fetched.field("senderId"), path)

    def _confirm(self, fetched: Fetched) -> None:
        message_id = fetched.field("messageId")
        answer = self.client.confirm_document(message_id, fetched.field("senderId"), self.options.receiver_id)
        log.info("confirmed %s%s", message_id, "" if answer else " (it was confirmed already)")

    # -- sending -------------------------------------------------------------------

    def upload(self, tally: Tally) -> None:
        """PutDocument each ready file; a fault moves it to failed/ and the round goes on, other failures end it."""
        if self.options.outbox is None:
            return
        for path in _ready_files(self.options.outbox):
            try:
                data = path.read_bytes()
            except OSError as exc:
                tally.fail(storage_failure(exc, f"cannot read {path}"))
                continue
            try:
                accepted = self._put(path.name, data)
            except RoundFailure as failure:
                if failure.kind is not Kind.FAULT or failure.fatal:
                    raise
                tally.fail(failure)
                _move(path, self.options.outbox / _FAILED)
                log.error("%s moved to %s/", path.name, _FAILED)
                continue
            if not accepted:
                raise RoundFailure(Kind.FAULT, f"the gateway answered false to {path.name}; it stays in the outbox")
            _move(path, self.options.outbox / _SENT)
            tally.sent += 1

    def _put(self, name: str, data: bytes) -> bool:
        message_id = self._outbox_id(name, data)
        accepted = self.client.put_document(messageId=message_id, data=data, senderId=self.sender,
                                            receiverId=self.options.send_to, formatType=self.options.format_type,
                                            documentType=name, compressType="")
        if accepted:
            log.info("sent %s as %s (%d bytes) to %s", name, message_id, len(data), self.options.send_to)
        return accepted

    def _outbox_id(self, name: str, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        return f"{self.sender}-{uuid.uuid5(uuid.NAMESPACE_URL, f'{self.sender}/{name}/{digest}')}"


class Stopped(Exception):
    """Raised by the SIGTERM handler: every step is safe to break off (atomic writes, idempotent puts)."""


def _check_writable(folder: Path) -> None:
    """A small write into ``folder``: a full disk or a read-only folder is found before a document is leased."""
    try:
        fd, name = tempfile.mkstemp(dir=folder, prefix=".bmrgw-probe-", suffix=".part")
        try:
            os.write(fd, bytes(4096))
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(name)
    except OSError as exc:
        raise storage_failure(exc, f"cannot write to {folder}") from exc


def _ready_files(outbox: Path) -> list[Path]:
    """Files to upload, oldest first: not hidden, not temporary, not in sent/ or failed/."""
    found = [p for p in outbox.iterdir() if p.is_file() and not p.name.startswith(".")
             and not p.name.endswith((".tmp", ".part"))]
    return sorted(found, key=lambda p: (p.stat().st_mtime_ns, p.name))


def _move(path: Path, folder: Path) -> None:
    try:
        folder.mkdir(exist_ok=True)
        target = folder / path.name
        n = 1
        while target.exists():
            target = folder / f"{path.name}.{n}"
            n += 1
        os.replace(path, target)
        fsync_dir(folder)
    except OSError as exc:
        raise storage_failure(exc, f"cannot move {path.name} to {folder}") from exc


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
    p.add_argument("--server", required=True, type=http_url, metavar="URL", help="the gateway's JX URL, e.g. http://gw:8080/jx")
    p.add_argument("--receiver-id", required=True, metavar="ID", help="our JX id (documents for it are fetched)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="where received documents go")
    p.add_argument("--outbox", type=Path, metavar="DIR", help="files placed here are uploaded")
    p.add_argument("--sender-id", metavar="ID", help="our JX id as a sender (default: --receiver-id)")
    p.add_argument("--send-to", default="DC", metavar="ID", help="receiver id of uploaded files (default: DC)")
    p.add_argument("--format-type", default="FILE", metavar="T", help="formatType of uploads (default: FILE)")
    p.add_argument("--interval", type=_seconds, default=30.0, metavar="SECONDS",
                   help="seconds between polls, ±20%% jitter (default: 30)")
    p.add_argument("--once", action="store_true",
                   help="one round (drain, upload), then exit: 0 if nothing failed, 1 if anything did")
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
        once=args.once, state=args.state, credentials=Credentials(
            user=args.user, password=args.password if args.password is not None else os.environ.get("BMRGW_PASSWORD"),
            cert=args.cert, key=args.key, ca=args.ca),
    )
    def stop(signum: int, frame: FrameType | None) -> None:
        raise Stopped

    signal.signal(signal.SIGTERM, stop)
    return Poller(options).run()
