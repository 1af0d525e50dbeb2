"""``bmrgw poll``: the city hall's JX polling client (SPEC.md "CLI", capability (E)).

A city hall behind a firewall that forbids inbound calls runs this client.
Each round it

1. drains its mailbox: GetDocument until ``false``; each document is written
   to ``--out`` atomically (temporary file, fsync, rename, folder fsync) under
   a safe name made from its messageId (or documentType), recorded as received, and only then
   confirmed with ConfirmDocument — so a crash at any point at worst gets the
   document handed out again, and the same messageId is never written twice,
   across restarts too (the record lives in ``--state``);
2. uploads every file placed in ``--outbox`` with PutDocument and moves it to
   ``<outbox>/sent/`` only after the gateway answered ``true``.  The messageId
   is derived from the sender, the file name, its SHA-256 and the compression,
   so a retry after a lost answer is recognised by the gateway as the same document.

Rounds follow the partner's schedule (:mod:`gateway.jx.schedule`: every N
seconds ±20 %, or cron-like times).  A round runs the ``before`` hook with
the outbox files, drains, uploads, then runs the ``after`` hook with the
files received (:mod:`gateway.jx.hooks`).  Every failure
(:mod:`gateway.jx.failure`: network, HTTP, fault, parse, disk full,
permission, hook, compression) is logged as what it is and counted in the
round's summary line; after a failed round the pause is at least 1, 2, 4 …
seconds (up to a minute), so nothing is retried in a tight loop.  A document
that could not be stored is not confirmed: the gateway hands it out again
after its lease.  ``once`` does one round: 0, or 1 if anything failed.  A
refusal of our credentials or id stops the partner: asking again cannot help.

GetDocument is read as it streams in (:mod:`gateway.jx.fetch`) and
PutDocument written as the file is read (:mod:`gateway.jx.send`), gzip/zip
``compressType`` handled piece by piece (:mod:`gateway.jx.compress`): memory
stays flat whatever the document's size.  Requests are written as the shipped
``jx2007.wsdl`` describes them; no WSDL is fetched from the server.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import tempfile
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from attachments.zipstream import ZipLimits

from ..errors import PollError
from .client import JxClient
from .compress import compress_type, compressed, inflate
from .failure import Kind, RoundFailure, storage_failure
from .fetch import Fetched
from .files import fsync_dir, write_atomically
from .hooks import run_hook
from .options import PollOptions
from .wire import Spool

__all__ = ["Poller", "Stopped", "Tally", "safe_name"]

_MAX_BACKOFF = 60.0
_SENT, _FAILED = "sent", "failed"
#: Characters no file name may hold on Windows (and "/" nowhere), replaced by "_".
_FORBIDDEN = frozenset('<>:"/\\|?*') | frozenset(chr(n) for n in range(32)) | {"\x7f"}
#: Names Windows reserves for devices, with any extension.
_RESERVED = frozenset({"CON", "PRN", "AUX", "NUL", *(f"COM{n}" for n in range(10)), *(f"LPT{n}" for n in range(10))})
#: Longest file name written, in UTF-8 bytes (ext4 and NTFS allow 255).
_NAME_BYTES = 200


def safe_name(text: str) -> str:
    """A file name for a messageId or documentType, unchanged when it is safe — Japanese included —
    on Linux and on Windows; otherwise cleaned (no separators, no characters Windows forbids, not
    hidden, no device name, no trailing dot or blank) with a hash of the original before its suffix."""
    cleaned = "".join("_" if ch in _FORBIDDEN else ch for ch in text).strip(". ")
    if cleaned.split(".")[0].upper() in _RESERVED:
        cleaned = f"_{cleaned}"
    while len(cleaned.encode("utf-8")) > _NAME_BYTES:
        cleaned = cleaned[:-1]
    if cleaned == text and cleaned:
        return cleaned
    stem, dot, suffix = cleaned.rpartition(".")
    if not dot or not stem or len(suffix) > 10:
        stem, dot, suffix = cleaned, "", ""
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{stem or 'document'}-{digest}{dot}{suffix}"


@dataclass(eq=False)
class Tally:
    """What one round did: the summary line, and whether ``--once`` exits 1."""

    log: logging.Logger
    received: list[Path] = field(default_factory=list)
    sent: int = 0
    failures: Counter[Kind] = field(default_factory=Counter)

    def fail(self, failure: RoundFailure) -> None:
        self.failures[failure.kind] += 1
        self.log.error("%s failure: %s", failure.kind.value, failure.reason)

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def summary(self) -> str:
        line = f"round done: {len(self.received)} received, {self.sent} sent"
        if self.failed:
            kinds = ", ".join(f"{n} {kind.value}" for kind, n in self.failures.most_common())
            line += f", {self.failed} failed ({kinds})"
        return line


class Stopped(Exception):
    """Raised by the SIGTERM handler: every step is safe to break off (atomic writes, idempotent puts)."""


def local_now() -> datetime:
    """The machine's local time, aware (schedules are the city hall's clock times)."""
    return datetime.now().astimezone()


class Poller:
    """One partner's polling client; :meth:`run` loops on its schedule (or does one round with ``once``)."""

    def __init__(self, options: PollOptions, *, stop: threading.Event | None = None,
                 now: Callable[[], datetime] = local_now) -> None:
        self.options = options
        self.stop = stop or threading.Event()
        self.now = now
        self.log = logging.getLogger(f"bmrgw.poll.{options.name}")
        self.state = options.state or options.out / ".bmrgw-poll"
        self.received = self.state / "received"
        self.sender = options.sender_id or options.receiver_id
        self.client = JxClient(options.server, sender=self.sender, timeout=options.timeout,
                               credentials=options.credentials, namespace=options.namespace)

    @property
    def stopping(self) -> bool:
        return self.stop.is_set()

    # -- the loop ------------------------------------------------------------------

    def run(self) -> int:
        """Rounds until stopped; with ``once`` one round: 0 if nothing failed, else 1."""
        try:
            self.prepare()
            return self._loop()
        except Stopped:
            self.log.info("stopped")
            return 0

    def prepare(self) -> None:
        """Create the folders; remove what a round cut short left behind."""
        try:
            for folder in (self.options.out, self.received):
                folder.mkdir(parents=True, exist_ok=True)
            if self.options.outbox is not None:
                (self.options.outbox / _SENT).mkdir(parents=True, exist_ok=True)
            for stale in self.options.out.glob(".*.part"):  # a document half-received when we last stopped
                stale.unlink(missing_ok=True)
        except OSError as exc:
            raise storage_failure(exc, f"cannot prepare {exc.filename or 'the folders'}") from exc

    def _loop(self) -> int:
        failed_rounds = 0
        if not self.options.once:
            self.log.info("polling %s for %s, %s", self.options.server, self.options.receiver_id,
                          self.options.schedule)
        while not self.stopping:
            tally = self.round()
            if tally.received or tally.sent or tally.failed:
                (self.log.warning if tally.failed else self.log.info)("%s", tally.summary())
            if self.options.once:
                return 1 if tally.failed else 0
            failed_rounds = failed_rounds + 1 if tally.failed else 0
            self.stop.wait(self._pause(failed_rounds))
        return 0

    def _pause(self, failed_rounds: int) -> float:
        """Until the schedule's next time; after failed rounds at least 1, 2, 4 … s (up to a minute)."""
        now = self.now()
        delay = max(0.0, (self.options.schedule.next_after(now) - now).total_seconds())
        if not failed_rounds:
            return delay
        backoff = min(_MAX_BACKOFF, 2.0 ** (failed_rounds - 1)) * random.uniform(0.5, 1.0)
        delay = max(delay, backoff)
        self.log.info("after %d failed round%s: next round in %.1f s", failed_rounds, "s" if failed_rounds > 1 else "",
                      delay)
        return delay

    def round(self) -> Tally:
        """Before hook, drain the mailbox, upload the outbox, after hook; a fatal failure ends the client."""
        tally = Tally(self.log)
        ready = self._before(tally)
        self._step(tally, self.drain)
        if ready is not None:
            self._step(tally, lambda t: self.upload(t, ready))
        if tally.received and self.options.after is not None:
            self._step(tally, lambda t: run_hook(self.options.after, "after", t.received, log=self.log,  # type: ignore[arg-type]
                                                 env=self._hook_env()))
        return tally

    def _step(self, tally: Tally, step: Callable[[Tally], None]) -> None:
        try:
            step(tally)
        except RoundFailure as failure:
            tally.fail(failure)
            if failure.fatal:
                raise PollError(f"{failure.reason}; stopping (retrying cannot help)") from failure

    def _before(self, tally: Tally) -> list[Path] | None:
        """The outbox files to send this round (after the ``before`` hook saw them); None: send nothing."""
        if self.options.outbox is None:
            return None
        try:
            ready = _ready_files(self.options.outbox)
            if self.options.before is not None:
                run_hook(self.options.before, "before", ready, log=self.log, env=self._hook_env())
                ready = _ready_files(self.options.outbox)  # the hook may have added or removed files
            return ready
        except RoundFailure as failure:
            tally.fail(failure)
            self.log.error("the outbox is not sent this round")
            return None
        except OSError as exc:
            tally.fail(storage_failure(exc, f"cannot read the outbox {self.options.outbox}"))
            return None

    def _hook_env(self) -> dict[str, str]:
        return {"BMRGW_PARTNER": self.options.name, "BMRGW_RECEIVER_ID": self.options.receiver_id,
                "BMRGW_SENDER_ID": self.sender}

    # -- receiving -----------------------------------------------------------------

    def drain(self, tally: Tally) -> None:
        """GetDocument until the mailbox is empty; the first failure ends the drain (raised)."""
        while not self.stopping:
            _check_writable(self.options.out)  # before a document is taken out of the mailbox
            fetched = self.client.get_document(self.options.receiver_id, self.options.out)
            if fetched is None:
                return
            path = self._store(fetched)
            if path is not None:
                tally.received.append(path)
            self._confirm(fetched)

    def _store(self, fetched: Fetched) -> Path | None:
        """Decompress, move the document to its name and record it (not confirmed if this fails);
        None when it was received before."""
        message_id = fetched.field("messageId")
        marker = self.received / hashlib.sha256(message_id.encode("utf-8")).hexdigest()
        if marker.exists():
            fetched.spool.discard()
            self.log.info("document %s was received before; confirming again", message_id)
            return None
        spool = self._decompressed(fetched)
        path = self._target(fetched)
        try:
            os.replace(spool.path, path)
            fsync_dir(path.parent)
            write_atomically(marker, [message_id.encode("utf-8")])
        except OSError as exc:
            spool.discard()
            raise storage_failure(exc, f"cannot store {message_id} in {path.parent}") from exc
        self.log.info("received %s (%d bytes, from %s) -> %s", message_id, spool.size, fetched.field("senderId"), path)
        return path

    def _decompressed(self, fetched: Fetched) -> Spool:
        declared = fetched.field("compressType")
        kind = compress_type(declared)
        if kind == "" or not self.options.decompress:
            return fetched.spool
        if kind is None:
            fetched.spool.discard()
            raise RoundFailure(Kind.COMPRESSION, f"document {fetched.field('messageId')} has compressType "
                               f"{declared[:40]!r}, which is neither gzip nor zip; it stays unconfirmed")
        limits = ZipLimits(max_bytes=self.options.max_document_bytes)
        return inflate(fetched.spool, kind, self.options.out, limits)

    def _target(self, fetched: Fetched) -> Path:
        """Where the document goes: named after its messageId or documentType, never over another file."""
        message_id = fetched.field("messageId")
        wanted = fetched.field(self.options.names) or message_id
        path = self.options.out / safe_name(wanted)
        if path.exists() and self.options.names != "messageId":
            stem, dot, suffix = path.name.rpartition(".")
            tag = hashlib.sha256(message_id.encode("utf-8")).hexdigest()[:12]
            path = path.with_name(f"{stem}-{tag}.{suffix}" if dot and stem else f"{path.name}-{tag}")
        return path

    def _confirm(self, fetched: Fetched) -> None:
        message_id = fetched.field("messageId")
        answer = self.client.confirm_document(message_id, fetched.field("senderId"), self.options.receiver_id)
        self.log.info("confirmed %s%s", message_id, "" if answer else " (it was confirmed already)")

    # -- sending -------------------------------------------------------------------

    def upload(self, tally: Tally, ready: list[Path]) -> None:
        """PutDocument each ready file; a fault moves it to failed/ and the round goes on, other failures end it."""
        outbox = self.options.outbox
        assert outbox is not None
        for path in ready:
            if self.stopping:
                return
            try:
                accepted = self._put(path)
            except RoundFailure as failure:
                if failure.kind is not Kind.FAULT or failure.fatal:
                    raise
                tally.fail(failure)
                _move(path, outbox / _FAILED)
                self.log.error("%s moved to %s/", path.name, _FAILED)
                continue
            if not accepted:
                raise RoundFailure(Kind.FAULT, f"the gateway answered false to {path.name}; it stays in the outbox")
            _move(path, outbox / _SENT)
            tally.sent += 1

    def _put(self, path: Path) -> bool:
        """PutDocument of the file at ``path``, read (and compressed) piece by piece as it is sent."""
        kind = self.options.compression
        try:
            message_id = self._outbox_id(path, kind)
            fields = {"messageId": message_id, "senderId": self.sender, "receiverId": self.options.send_to,
                      "formatType": self.options.format_type, "documentType": path.name, "compressType": kind}
            accepted = self.client.put_streamed(fields, compressed(path, kind) if kind else _pieces(path))
        except OSError as exc:
            raise storage_failure(exc, f"cannot read {path}") from exc
        if accepted:
            self.log.info("sent %s as %s (%d bytes%s) to %s", path.name, message_id, path.stat().st_size,
                          f", {kind}" if kind else "", self.options.send_to)
        return accepted

    def _outbox_id(self, path: Path, kind: str) -> str:
        """From the sender, name, content and compression: a retry after a lost answer is the same document."""
        digest = hashlib.sha256()
        for piece in _pieces(path):
            digest.update(piece)
        key = f"{self.sender}/{path.name}/{digest.hexdigest()}" + (f"/{kind}" if kind else "")
        return f"{self.sender}-{uuid.uuid5(uuid.NAMESPACE_URL, key)}"


def _pieces(path: Path, size: int = 1024 * 1024) -> Iterator[bytes]:
    with path.open("rb") as fh:
        yield from iter(lambda: fh.read(size), b"")


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
