"""``bmrgw send``: a file to a business AP through the gateway, in verified parts (capability D).

1. with ``--charset``, convert the UTF-8 file to the partner's encoding
   (:mod:`attachments.transfer.charset`), and with ``--zip`` zip it, each
   into a private spool file in the system's temp folder (deleted on every
   exit); hash what will travel into a :class:`~attachments.parts.Manifest`;
2. ask the receiver which parts it already has (``GetFileStatus``): a
   transfer's id is derived from the file's SHA-256, name, compression and
   part size, so running the same command again resumes;
3. send each missing part as one ``PutFilePart`` (SwA, or MTOM with
   ``--mtom``) with a ``Content-Length``, streaming it from the file.

Outcomes are :class:`SendError` s with an exit code; see :data:`EXIT_CODES`.
"""

from __future__ import annotations

import base64
import hashlib
import ssl
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp

from attachments.message import get_file_status, put_file_part, read_part_reply, read_status_reply
from attachments.mime import closing, new_boundary, part_head, related_content_type, root_content_type
from attachments.names import safe_file_name
from attachments.parts import FileInfo, Manifest, PartInfo, file_id_for
from attachments.zipstream import ZipWriter
from gateway.charset import Losses
from gateway.errors import GatewayError, SendError
from gateway.ns import FAULT, FILE, H_SOAPACTION, SoapVersion
from gateway.parser import parse
from gateway.terminal import Progress

from .charset import FileCharset, recode_file

__all__ = [
    "SendOptions",
    "SendResult",
    "send_file",
    "EXIT_CODES",
    "prepare",
    "Prepared",
    "part_message",
]

#: Exit codes of ``bmrgw send``, for scripts.
EXIT_CODES = {
    0: "the file is complete at the receiver (sent now, or already before)",
    1: "the gateway or the receiver refused the file (the message names the fault code), or TLS failed",
    2: "bad usage: the file cannot be read or converted (--charset, --record-bytes), its name is unsafe, or an "
       "option is invalid",
    3: "the gateway or receiver could not be reached or broke off; run the same command again to resume",
    130: "interrupted; run the same command again to resume",
}
#: Faults that say "not now" rather than "never": the sender should retry (resume) later.
_TRANSIENT = frozenset({"EndpointUnavailable", "EndpointTimeout", "LogUnavailable", "RequestTimeout"})
#: HTTP statuses without a SOAP fault that a later try may not see (a proxy busy or restarting).
_TRANSIENT_HTTP = frozenset({408, 429, 502, 503, 504})
_CHUNK = 1024 * 1024
_ATTACHMENT_ID = "part@bmrgw"
_ROOT_ID = "<root@bmrgw>"




@dataclass(frozen=True, kw_only=True)
class SendOptions:
    path: Path
    to: str
    """Destination business-AP name (the routing header's r:To)."""
    gateway: str
    """The gateway's relay URL (``http://host:port/soap``; a bare base URL gets ``/soap``)."""
    zip: bool = False
    part_size: int = 64 * 1024 * 1024
    mtom: bool = False
    version: SoapVersion = SoapVersion.V11
    sender: str | None = None
    """Our business-AP name (the routing header's r:From)."""
    user: str | None = None
    password: str | None = None
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    timeout: float = 600.0
    """Seconds to wait for each answer (the last part's answer waits for the receiver's verification)."""
    only_parts: frozenset[int] | None = None
    """Send only these part numbers (a partial send; the CLI always sends all)."""
    charset: FileCharset | None = None
    """Convert the file to the partner's encoding (and check its records) before it is hashed."""


@dataclass(frozen=True, kw_only=True)
class SendResult:
    info: FileInfo
    sent: int
    """Parts sent now."""
    skipped: int
    """Parts the receiver already had."""
    published: str | None
    bytes_sent: int
    losses: Losses | None = None
    """What converting lost (``unmappable: substitute``), when the file was converted."""


@dataclass(frozen=True, kw_only=True)
class Prepared:
    """The file as it travels: where to read the stream from, and its manifest."""

    info: FileInfo
    stream: Path
    manifest: Manifest
    losses: Losses | None = None


def _chunks(path: Path, start: int = 0, length: int | None = None) -> Iterator[bytes]:
    with path.open("rb") as fh:
        fh.seek(start)
        left = length
        while left is None or left > 0:
            chunk = fh.read(_CHUNK if left is None else min(_CHUNK, left))
            if not chunk:
                return
            if left is not None:
                left -= len(chunk)
            yield chunk


def prepare(options: SendOptions, spool: Path) -> Prepared:
    """Convert (and zip) and hash the file; raises SendError(2) when it cannot be read, its name is unsafe,
    or it cannot be converted (a character with no mapping, a record of another length)."""
    name = options.path.name
    losses = None
    try:
        safe_file_name(name)
        if not options.path.is_file():
            raise SendError(f"{options.path}: not a readable file", 2)
        source = options.path
        if options.charset is not None:
            source, losses = _convert(options.path, spool, options.charset)
        file_manifest = _manifest(source, options.part_size)
        stream = source
        if options.zip:
            stream = spool / "stream.zip"
            _zip_into(source, stream, name, int(options.path.stat().st_mtime))
    except GatewayError as exc:
        raise SendError(exc.reason, 2) from exc
    except OSError as exc:
        raise SendError(f"{options.path}: cannot read: {exc.strerror or exc}", 2) from exc
    manifest = _manifest(stream, options.part_size) if options.zip else file_manifest
    compression = "zip" if options.zip else "none"
    info = FileInfo(file_id=file_id_for(file_manifest.stream_sha256, name, compression, options.part_size),
                    file_name=name, file_size=file_manifest.stream_size, file_sha256=file_manifest.stream_sha256,
                    compression=compression, stream_size=manifest.stream_size, part_size=options.part_size,
                    part_count=len(manifest.parts))
    return Prepared(info=info, stream=stream, manifest=manifest, losses=losses)


def _convert(path: Path, spool: Path, charset: FileCharset) -> tuple[Path, Losses]:
    """The file as the partner gets it (converted into ``spool``, or ``path`` itself), records checked."""
    try:
        return recode_file(path, spool / "converted", charset, to_partner=True,
                           what=f"converted to {charset.profile.encoding}" if charset.profile else "")
    except GatewayError as exc:  # UnmappableCharacter, MalformedMessage (not UTF-8), RecordLengthMismatch
        raise SendError(f"{path}: {exc.reason}; nothing was sent", 2) from exc


def _manifest(path: Path, part_size: int) -> Manifest:
    """Per-part and whole SHA-256 of a file; the whole-file hash runs in a second thread
    (hashlib releases the GIL), so hashing takes one pass's time on two cores, not two."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        whole = pool.submit(_sha256_of, path)
        parts = Manifest.build(_chunks(path), part_size, hash_whole=False)
        return replace(parts, stream_sha256=whole.result())


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    for chunk in _chunks(path):
        digest.update(chunk)
    return digest.hexdigest()


def _zip_into(path: Path, target: Path, name: str, mtime: int) -> None:
    # The zip's bytes depend only on the file (fixed time stamp), so a resumed
    # transfer re-creates exactly the stream whose parts the receiver holds.
    writer = ZipWriter(name, mtime=mtime)
    with target.open("wb") as out:
        out.write(writer.start())
        for chunk in _chunks(path):
            out.write(writer.write(chunk))
        out.write(writer.finish())


class _Client:
    """The HTTP side: one session, requests to the gateway, faults turned into SendErrors."""

    def __init__(self, options: SendOptions) -> None:
        self._options = options
        url = options.gateway.rstrip("/")
        self.url = url if url.rsplit("/", 1)[-1].startswith("soap") else f"{url}/soap"
        headers: dict[str, str] = {}
        if options.user:
            token = base64.b64encode(f"{options.user}:{options.password or ''}".encode()).decode("ascii")
            headers["Authorization"] = f"Basic {token}"
        self.session = aiohttp.ClientSession(
            headers=headers, connector=aiohttp.TCPConnector(ssl=_ssl_context(options)),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=options.timeout))

    async def call(self, body: bytes | AsyncIterator[bytes], headers: dict[str, str], what: str) -> bytes:
        try:
            async with self.session.post(self.url, data=body, headers=headers) as response:
                answer = await response.read()
                if response.status >= 300:
                    raise _fault_error(response.status, answer, what, self.url)
                return answer
        except aiohttp.ClientSSLError as exc:
            if "WRONG_VERSION_NUMBER" in str(exc).upper().replace(" ", "_"):  # a plain-HTTP answer to a TLS hello
                raise SendError(f"{what}: {self.url} answers plain HTTP, not TLS; give --gateway as "
                                f"{self.url.replace('https://', 'http://', 1)}", 2) from exc
            raise SendError(f"{what}: the TLS handshake with {self.url} failed ({exc}); check --ca, --cert and "
                            "--key", 1) from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            reason = str(exc) or type(exc).__name__
            raise SendError(f"{what}: no answer from {self.url}: {reason}; run the same command again to "
                            "resume", 3) from exc


def _ssl_context(options: SendOptions) -> ssl.SSLContext | bool:
    if options.ca is None and options.cert is None:
        return True
    context = ssl.create_default_context(cafile=str(options.ca) if options.ca else None)
    if options.cert is not None:
        context.load_cert_chain(str(options.cert), str(options.key) if options.key else None)
    return context


def _fault_error(status: int, answer: bytes, what: str, url: str) -> SendError:
    """The SendError for an error answer: a SOAP fault's code and reason, else the HTTP status."""
    try:
        root = parse(answer, max_bytes=1024 * 1024)
    except GatewayError:
        if status in _TRANSIENT_HTTP:
            return SendError(f"{what}: HTTP {status} without a SOAP fault; run the same command again to resume", 3)
        return SendError(f"{what}: HTTP {status} without a SOAP fault from {url}: is it a bmrgw gateway "
                         "(http://HOST:PORT or .../soap)?", 1)
    code = next((e.get("code") for e in root.iter(f"{{{FAULT}}}Error")), None) or "Fault"
    reason = next((t.text for t in root.iter("faultstring", "{*}Text") if t.text), None) or f"HTTP {status}"
    return SendError(f"{what}: refused ({code}): {reason}", 3 if code in _TRANSIENT else 1)


def _headers(content_type: str, action: str) -> dict[str, str]:
    return {"Content-Type": content_type, H_SOAPACTION: f'"{FILE}/{action}"'}


async def send_file(options: SendOptions, *, progress: Progress | None = None) -> SendResult:
    """Send a file through the gateway; raises SendError when it is not complete at the receiver."""
    with ExitStack() as exits:
        spool = Path(exits.enter_context(tempfile.TemporaryDirectory(prefix="bmrgw-send-")))
        if progress is None and sys.stderr.isatty():
            doing = ("converting, " if options.charset is not None and options.charset.converts else "") + \
                ("zipping, " if options.zip else "")
            sys.stderr.write(f"{options.path.name}: {doing}hashing…")
            sys.stderr.flush()
        prepared = prepare(options, spool)
        client = _Client(options)
        try:
            return await _send(client, prepared, options, progress)
        finally:
            await client.session.close()
    raise AssertionError("unreachable")


async def _send(client: _Client, prepared: Prepared, options: SendOptions,
                progress: Progress | None) -> SendResult:
    info = prepared.info
    status = read_status_reply(await client.call(
        get_file_status(info.file_id, version=options.version, to=options.to, sender=options.sender),
        _headers(options.version.content_type + "; charset=utf-8", "GetFileStatus"), "GetFileStatus"))
    todo = [p for p in prepared.manifest.parts if p.part_no not in status.parts
            and (options.only_parts is None or p.part_no in options.only_parts)]
    published, sent_bytes = status.published, 0
    progress = progress or Progress(sum(p.size for p in todo), enabled=sys.stderr.isatty())
    try:
        for part in todo:
            reply = await _put(client, prepared, part, options, progress)
            sent_bytes += part.size
            published = reply or published
    finally:
        progress.close()
    if published is None and options.only_parts is None:
        raise SendError(f"all {info.part_count} parts were acknowledged but the receiver did not publish "
                        f"{info.file_name}", 1)
    return SendResult(info=info, sent=len(todo), skipped=len(status.parts), published=published,
                      bytes_sent=sent_bytes, losses=prepared.losses)


def part_message(info: FileInfo, part: PartInfo, *, to: str, mtom: bool = False,
                 version: SoapVersion = SoapVersion.V11, sender: str | None = None) -> tuple[dict[str, str], bytes, bytes]:
    """HTTP headers, and the bytes before and after the part's data, of one PutFilePart request."""
    envelope = put_file_part(info, part.part_no, part.sha256, content_id=_ATTACHMENT_ID, mtom=mtom,
                             version=version, to=to, sender=sender,
                             message_id=f"{info.file_id}.{part.part_no}.{uuid.uuid4().hex[:8]}")
    boundary, action = new_boundary(), f"{FILE}/PutFilePart"
    head = part_head(boundary, [("Content-Type", root_content_type(version, mtom=mtom, action=action)),
                                ("Content-Transfer-Encoding", "binary"), ("Content-ID", _ROOT_ID)], first=True)
    head += envelope + part_head(boundary, [("Content-Type", "application/octet-stream"),
                                            ("Content-Transfer-Encoding", "binary"),
                                            ("Content-ID", f"<{_ATTACHMENT_ID}>")])
    tail = closing(boundary)
    content_type = related_content_type(boundary, version=version, mtom=mtom, start=_ROOT_ID, action=action)
    headers = {**_headers(content_type, "PutFilePart"), "Content-Length": str(len(head) + part.size + len(tail))}
    return headers, head, tail


async def _put(client: _Client, prepared: Prepared, part: PartInfo, options: SendOptions,
               progress: Progress) -> str | None:
    info = prepared.info
    headers, head, tail = part_message(info, part, to=options.to, mtom=options.mtom, version=options.version,
                                       sender=options.sender)

    async def body() -> AsyncIterator[bytes]:
        yield head
        for chunk in _chunks(prepared.stream, part.offset, part.size):
            progress.add(len(chunk))
            yield chunk
        yield tail

    what = f"part {part.part_no}/{info.part_count}"
    reply = read_part_reply(await client.call(body(), headers, what))
    if reply.file_id != info.file_id or reply.part_no != part.part_no:
        raise SendError(f"{what}: the receiver acknowledged part {reply.part_no} of {reply.file_id} instead", 1)
    return reply.published


def describe(result: SendResult, options: SendOptions) -> str:
    """The one-line summary ``bmrgw send`` prints on success."""
    info = result.info
    how = f"{info.part_count} part{'s' if info.part_count != 1 else ''}" + (", zipped" if options.zip else "")
    if options.charset is not None and options.charset.converts:
        how += f", converted to {options.charset.describe()}"
    elif options.charset is not None:
        how += f", {options.charset.describe()}"
    skipped = f", {result.skipped} already at the receiver" if result.skipped else ""
    where = f" as {result.published}" if result.published else ""
    return (f"sent {options.path.name} ({info.file_size} bytes, {how}{skipped}) to {options.to}: "
            f"complete{where}, sha256 {info.file_sha256}")
