"""Reassembly: parts land in a hidden staging folder; the file appears only when verified.

Layout under the receiver's folder ``DIR``::

    DIR/.bmrgw-partial/<fileId>/info.json    the FileInfo of the transfer
    DIR/.bmrgw-partial/<fileId>/sender.json  who started it (see :class:`Sender`)
    DIR/.bmrgw-partial/<fileId>/data         the transmitted stream, parts written at their offsets
    DIR/.bmrgw-partial/<fileId>/parts/<n>    a verified part (written after its data was fsync'ed)
    DIR/.bmrgw-partial/<fileId>/published    the transfer is complete (its name, for duplicates)
    DIR/.bmrgw-partial/<fileId>/converted.json  what converting it to UTF-8 did (``bmrgw receive --charset``)
    DIR/.bmrgw-partial/.senders/<name>       who published the file ``DIR/<name>``
    DIR/.bmrgw-partial/<fileId>/sealed/<n>   with encryption: part n sealed for the organisation, instead of data

With a sealing :class:`~gateway.crypto.Vault` (``gateway.encryption`` in the
receiver's config) no byte of a part rests in plaintext: each part is sealed
as it streams in (AES-256-GCM under the data key of the organisation — this
receiving business-AP — with the file id and part number bound into every
chunk), and publishing opens the parts in order into the verified file.

A part is hashed while it is written and recorded only when its size and
SHA-256 match; a re-sent part that is already recorded is drained without
writing.  When the last part is recorded, the stream is verified (and
unzipped with zip-bomb limits) into a temporary file in the staging folder,
fsync'ed, converted when the receiver converts (``convert``: to UTF-8), and
renamed into ``DIR`` — so ``DIR`` only ever shows complete, verified files.
Nothing here knows about HTTP or SOAP.

A transfer is bound to its sender: parts of a transfer another sender
started are refused, and so is a transfer whose file would replace
``DIR/<name>`` when that file was published by another sender — or by no
sender this receiver knows of (a file put there by hand) — with
:class:`~gateway.errors.SenderMismatch`.  A sender replaces its own files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from gateway.crypto import Vault
from gateway.crypto.seal import SealWriter
from gateway.durable import fsync_dir, private_dir, private_open
from gateway.errors import ChecksumMismatch, MalformedMessage, SenderMismatch

from .parts import FILE_ID, FileInfo, PartHasher, PartInfo
from .zipstream import ZipLimits, ZipReader

__all__ = ["Staging", "PartWriter", "FileStatus", "Sender", "STAGING_DIR", "Convert"]

STAGING_DIR = ".bmrgw-partial"
#: Under STAGING_DIR: who published each file (a dot name: never a fileId).
_SENDERS = ".senders"
_CHUNK = 1 << 20
#: Flags of a file written afresh.
_NEW = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
#: Turns a verified file into the one to publish: (its transfer, the verified file, a path it may write) →
#: (the file to publish, what to keep in the transfer's ``converted.json``, or None to keep nothing).
Convert = Callable[[FileInfo, Path, Path], tuple[Path, dict[str, object] | None]]


@dataclass(frozen=True, kw_only=True)
class FileStatus:
    """What a receiver has of one transfer."""

    file_id: str
    parts: frozenset[int]
    part_count: int | None
    published: str | None = None
    """The published file name once the transfer is complete."""


@dataclass(frozen=True, kw_only=True)
class Sender:
    """Who sends a transfer, as the receiver learns it.

    ``client`` is the client the gateway authenticated (its ``X-Bmrgw-Client``
    header), ``name`` the sender business AP of the routing header
    (``r:From``), which the gateway checked against that client's
    ``senders``.  Both together are the sender: with a peer gateway in
    between the client is that gateway, and ``name`` tells its senders apart.
    """

    client: str | None = None
    name: str | None = None

    @property
    def label(self) -> str:
        """The sender for a fault message."""
        parts = [f"client {self.client}" if self.client else "", f"From {self.name}" if self.name else ""]
        return ", ".join(p for p in parts if p) or "an unnamed sender"

    def to_json(self) -> str:
        return json.dumps({"client": self.client, "name": self.name})

    @classmethod
    def from_json(cls, text: str) -> Sender:
        data = json.loads(text)
        return cls(client=data.get("client"), name=data.get("name"))


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with os.fdopen(private_open(tmp, _NEW), "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class PartWriter:
    """Writes one part at its offset in the stream file while hashing it.

    ``stream`` continues the SHA-256 of the whole stream when this part is
    the next one in order, so an in-order transfer needs no second reading.
    """

    def __init__(self, folder: Path, part: PartInfo, stream: hashlib._Hash | None = None) -> None:
        self._folder = folder
        self._hasher = PartHasher(part)
        self.part = part
        self.stream = stream
        self._at = part.offset
        self._fd = self._open()

    def _open(self) -> int:
        return private_open(self._folder / "data", os.O_WRONLY | os.O_CREAT)

    def write(self, data: bytes | memoryview) -> None:
        self._hasher.write(data)
        if self.stream is not None:
            self.stream.update(data)
        self._put(data)

    def _put(self, data: bytes | memoryview) -> None:
        os.pwrite(self._fd, data, self._at)
        self._at += len(data)

    def _durable(self) -> None:
        os.fsync(self._fd)

    def verify(self) -> None:
        self._hasher.verify()

    def commit(self) -> None:
        """Verify size and SHA-256, make the bytes durable, then record the part."""
        try:
            self._hasher.verify()
            self._durable()
        finally:
            os.close(self._fd)
        part = self._hasher.part
        _write_atomically(self._folder / "parts" / str(part.part_no), json.dumps(asdict(part)))

    def abort(self) -> None:
        os.close(self._fd)


class SealedPartWriter(PartWriter):
    """A :class:`PartWriter` that seals the part into ``sealed/<n>`` as it arrives: no plaintext on disk."""

    def __init__(self, folder: Path, part: PartInfo, stream: hashlib._Hash | None, sealer: SealWriter) -> None:
        private_dir(folder / "sealed")
        self._path = folder / "sealed" / str(part.part_no)
        self._sealer = sealer
        super().__init__(folder, part, stream)

    def _open(self) -> int:
        fd = private_open(self._path.with_suffix(".tmp"), _NEW)
        os.write(fd, self._sealer.header)
        return fd

    def _put(self, data: bytes | memoryview) -> None:
        for sealed in self._sealer.update(bytes(data)):
            _write_all(self._fd, sealed)

    def _durable(self) -> None:
        _write_all(self._fd, self._sealer.finish())
        os.fsync(self._fd)
        os.replace(self._path.with_suffix(".tmp"), self._path)

    def abort(self) -> None:
        super().abort()
        self._path.with_suffix(".tmp").unlink(missing_ok=True)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class Staging:
    """The staging folder of a receiving directory."""

    def __init__(self, directory: Path, *, max_file_bytes: int, max_ratio: float = 200.0,
                 max_parts: int | None = None, vault: Vault | None = None, org: str = "",
                 convert: Convert | None = None) -> None:
        self.directory = directory
        self.convert = convert
        """Applied to each verified file before it is published (a failure drops the transfer)."""
        self.vault = vault or Vault()
        """Seals staged parts for ``org`` (the receiving business-AP) when it holds a key ring."""
        self.org = org
        self.root = directory / STAGING_DIR
        private_dir(self.root)
        self.vault.register(org, directory)  # so that 'bmrgw keys rotate --org' finds the parts it seals
        self.senders = self.root / _SENDERS
        private_dir(self.senders)
        # Checking a name's sender and renaming the file into DIR is one step:
        # publishes of different transfers run in threads at the same time.
        self._names = threading.Lock()
        self.max_file_bytes = max_file_bytes
        self.max_ratio = max_ratio
        self.max_parts = max_parts
        # fileId -> (bytes hashed in order so far, their SHA-256): in memory only;
        # after a restart or out-of-order parts the stream is read once more instead.
        self._running: dict[str, tuple[int, hashlib._Hash]] = {}

    def _folder(self, file_id: str) -> Path:
        if not FILE_ID.fullmatch(file_id):
            raise MalformedMessage(f"fileId {file_id[:80]!r} must be 1-64 letters, digits, '_' or '-'")
        return self.root / file_id

    def status(self, file_id: str) -> FileStatus:
        folder = self._folder(file_id)
        info = self._info(file_id)
        published = folder / "published"
        if published.exists():
            assert info is not None
            return FileStatus(file_id=file_id, parts=frozenset(range(1, info.part_count + 1)),
                              part_count=info.part_count, published=published.read_text(encoding="utf-8"))
        parts = folder / "parts"
        have = frozenset(int(p.name) for p in parts.iterdir() if p.name.isdigit()) if parts.exists() else frozenset()
        return FileStatus(file_id=file_id, parts=have, part_count=info.part_count if info else None)

    def started(self, file_id: str) -> bool:
        """Whether a transfer of ``file_id`` is staged (begun, or finished and still remembered)."""
        return self._info(file_id) is not None

    def begin(self, info: FileInfo, sender: Sender = Sender()) -> None:
        """Start or continue a transfer of ``sender``; its description must not change between parts."""
        info.check(max_file_bytes=self.max_file_bytes, max_parts=self.max_parts)
        known = self._info(info.file_id)
        if known is None:
            self._check_name(info.file_name, sender)  # before a byte is stored
            folder = self._folder(info.file_id)
            private_dir(folder / "parts")
            _write_atomically(folder / "sender.json", sender.to_json())
            _write_atomically(folder / "info.json", json.dumps(asdict(info)))
            return
        self.check_sender(info.file_id, sender)
        if known != info:
            raise MalformedMessage(f"fileId {info.file_id} was started with a different name, size, checksum, "
                                   "compression or part size")

    def sender_of(self, file_id: str) -> Sender:
        """Who started a transfer (an unnamed sender for transfers staged before senders were recorded)."""
        try:
            return Sender.from_json((self._folder(file_id) / "sender.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            return Sender()

    def check_sender(self, file_id: str, sender: Sender) -> None:
        """Refuse ``sender`` a transfer another sender started (no transfer yet: nothing to refuse)."""
        if self._info(file_id) is not None and self.sender_of(file_id) != sender:
            raise SenderMismatch(f"transfer {file_id} was started by another sender; {sender.label} may not "
                                 "continue it or ask for it", detail=file_id)

    def publisher(self, file_name: str) -> Sender | None:
        """Who published ``DIR/<file_name>``; ``None`` when no sender this receiver knows of did."""
        try:
            return Sender.from_json((self.senders / file_name).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None

    def _check_name(self, file_name: str, sender: Sender) -> None:
        """Refuse a transfer whose file would replace a file another sender published."""
        if (self.directory / file_name).exists() and self.publisher(file_name) != sender:
            raise SenderMismatch(f"{file_name} was published by another sender; a transfer from {sender.label} "
                                 "may not replace it", detail=file_name)

    def writer(self, info: FileInfo, part: PartInfo) -> PartWriter | None:
        """A writer for a part not yet recorded; None for a duplicate (drain it, answer as before)."""
        status = self.status(info.file_id)
        if status.published is not None or part.part_no in status.parts:
            return None
        done, digest = self._running.get(info.file_id, (0, hashlib.sha256()))
        stream = digest.copy() if done == part.offset else None
        if self.vault.sealing:
            sealer = self.vault.writer(self.org, f"{info.file_id}/{part.part_no}")
            return SealedPartWriter(self._folder(info.file_id), part, stream, sealer)
        return PartWriter(self._folder(info.file_id), part, stream)

    def commit(self, writer: PartWriter, file_id: str) -> None:
        """Record a written part (see :meth:`PartWriter.commit`) and advance the in-order hash."""
        writer.commit()
        if writer.stream is not None:
            self._running[file_id] = (writer.part.offset + writer.part.size, writer.stream)

    def publish(self, file_id: str) -> Path:
        """Verify the complete stream and rename the file into the directory (idempotent)."""
        folder = self._folder(file_id)
        info = self._info(file_id)
        if info is None:
            raise MalformedMessage(f"no transfer {file_id}")
        target = self.directory / info.file_name
        sender = self.sender_of(file_id)
        if (folder / "published").exists() or self._published_before_crash(info, folder / "data", target, sender):
            return target
        try:
            verified = self._verify(info, folder / "data", folder / "file.tmp", self._running.pop(file_id, None))
            self._replace(self._converted(info, verified, folder), info.file_name, sender)
        except BaseException:
            # A stream that fails verification, or that may not be published, is useless:
            # drop it so a resend starts clean.
            shutil.rmtree(folder, ignore_errors=True)
            raise
        _write_atomically(folder / "published", info.file_name)
        (folder / "data").unlink(missing_ok=True)
        shutil.rmtree(folder / "sealed", ignore_errors=True)
        shutil.rmtree(folder / "parts", ignore_errors=True)
        return target

    def _converted(self, info: FileInfo, verified: Path, folder: Path) -> Path:
        """The file to publish: ``verified`` as the receiver's ``convert`` makes it (the verified copy goes)."""
        if self.convert is None:
            return verified
        result, record = self.convert(info, verified, folder / "converted.tmp")
        if record is not None:
            _write_atomically(folder / "converted.json", json.dumps(record, ensure_ascii=False))
        if result != verified and verified.name == "file.tmp":
            verified.unlink()
        return result

    def _replace(self, verified: Path, file_name: str, sender: Sender) -> None:
        """Rename the verified file into DIR as ``sender``'s (its sender is recorded first)."""
        with self._names:
            self._check_name(file_name, sender)  # another sender may have published the name meanwhile
            _write_atomically(self.senders / file_name, sender.to_json())
            os.replace(verified, self.directory / file_name)
            fsync_dir(self.directory)

    def _published_before_crash(self, info: FileInfo, data: Path, target: Path, sender: Sender) -> bool:
        """An uncompressed stream is renamed into place; a crash before the marker leaves only the file."""
        if info.compression != "none" or data.exists() or not target.exists():
            return False
        if self.publisher(info.file_name) != sender:
            return False
        digest, size = hashlib.sha256(), 0
        for chunk in _read(target):
            digest.update(chunk)
            size += len(chunk)
        if (digest.hexdigest(), size) != (info.file_sha256, info.file_size):
            return False
        _write_atomically(target.parent / STAGING_DIR / info.file_id / "published", info.file_name)
        return True

    def _verify(self, info: FileInfo, data: Path, tmp: Path, running: tuple[int, hashlib._Hash] | None) -> Path:
        """The verified file, ready to be renamed: the stream itself, or its unzipped member in ``tmp``."""
        if self.vault.sealing:
            return self._unseal(info, data.parent, tmp)
        data.touch()
        if os.path.getsize(data) != info.stream_size:
            raise ChecksumMismatch(f"the received stream has {os.path.getsize(data)} bytes, not {info.stream_size}")
        digest, size = hashlib.sha256(), 0
        if info.compression == "none":
            if running is not None and running[0] == info.stream_size:
                digest, size = running[1], running[0]
            else:
                for chunk in _read(data):
                    digest.update(chunk)
                    size += len(chunk)
            _check_file(info, digest.hexdigest(), size)
            return data
        reader = ZipReader(ZipLimits(max_bytes=info.file_size, max_ratio=self.max_ratio))
        with os.fdopen(private_open(tmp, _NEW), "wb") as out:
            for chunk in _read(data):
                for piece in reader.feed(chunk):
                    digest.update(piece)
                    size += len(piece)
                    out.write(piece)
            reader.close()
            _check_file(info, digest.hexdigest(), size)
            out.flush()
            os.fsync(out.fileno())
        return tmp

    def _unseal(self, info: FileInfo, folder: Path, tmp: Path) -> Path:
        """The sealed parts opened in order into ``tmp`` (unzipped when zipped), verified."""
        reader = ZipReader(ZipLimits(max_bytes=info.file_size, max_ratio=self.max_ratio)) \
            if info.compression != "none" else None
        digest, size = hashlib.sha256(), 0
        with os.fdopen(private_open(tmp, _NEW), "wb") as out:
            for chunk in self._sealed_stream(info, folder):
                for piece in reader.feed(chunk) if reader is not None else [chunk]:
                    digest.update(piece)
                    size += len(piece)
                    out.write(piece)
            if reader is not None:
                reader.close()
            _check_file(info, digest.hexdigest(), size)
            out.flush()
            os.fsync(out.fileno())
        return tmp

    def _sealed_stream(self, info: FileInfo, folder: Path) -> Iterator[bytes]:
        """The transmitted stream, part after part, each opened and authenticated."""
        streamed = 0
        for number in range(1, info.part_count + 1):
            part = PartInfo(**json.loads((folder / "parts" / str(number)).read_text(encoding="utf-8")))
            path = folder / "sealed" / str(number)
            for chunk in self.vault.opened(self.org, f"{info.file_id}/{number}", part.size, path.stat().st_size,
                                           _read(path)):
                streamed += len(chunk)
                yield chunk
        if streamed != info.stream_size:
            raise ChecksumMismatch(f"the received stream has {streamed} bytes, not {info.stream_size}")

    def expire(self, max_age: float, *, now: float | None = None) -> list[str]:
        """Forget transfers untouched for ``max_age`` seconds: abandoned partial files, and the
        markers of finished ones (a part re-sent after that starts the transfer afresh)."""
        now = time.time() if now is None else now
        gone = []
        for folder in self.root.iterdir():
            if folder.name.startswith("."):
                continue  # the publishers of files still in DIR: kept as long as the receiver
            if folder.is_dir() and now - _last_change(folder) > max_age:
                shutil.rmtree(folder, ignore_errors=True)
                self._running.pop(folder.name, None)
                gone.append(folder.name)
        return gone

    def _info(self, file_id: str) -> FileInfo | None:
        try:
            return FileInfo(**json.loads((self._folder(file_id) / "info.json").read_text(encoding="utf-8")))
        except FileNotFoundError:
            return None


def _last_change(folder: Path) -> float:
    """The newest modification time in a transfer's folder (a part written, a marker set)."""
    times = [folder.stat().st_mtime]
    for path in (folder, folder / "parts"):
        if path.is_dir():
            times += [entry.stat().st_mtime for entry in os.scandir(path)]
    return max(times)


def _check_file(info: FileInfo, sha256: str, size: int) -> None:
    if size != info.file_size:
        raise ChecksumMismatch(f"the reassembled file has {size} bytes, not the declared {info.file_size}")
    if sha256 != info.file_sha256:
        raise ChecksumMismatch("the reassembled file does not match its fileSha256")


def _read(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            yield chunk
