"""The three JX calls as ``bmrgw poll`` makes them, every failure a :class:`RoundFailure` of its kind.

GetDocument is streamed to disk (:mod:`gateway.jx.fetch`); PutDocument and
ConfirmDocument go through zeep, built from the shipped ``jx2007.wsdl`` (no
WSDL is fetched from the server), over the same ``requests`` session:
credentials, client certificate and CA are set once.  What requests, zeep
and lxml raise is translated here, in one place, into one short line.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import MalformedMessage
from ..ns import JX
from ..parser import PrologGuard
from .failure import Kind, RoundFailure, describe, fit
from .fetch import Fetched, get_document, message_header
from .send import put_streamed

__all__ = ["Credentials", "JxClient"]

_BINDING = f"{{{JX}}}JXMSTransferSoap"
#: HTTP statuses after which asking again cannot help until the operator changes the credentials.
_FATAL_STATUS = frozenset({401, 403})


@dataclass(frozen=True, kw_only=True)
class Credentials:
    user: str | None = None
    """HTTP Basic user."""
    password: str | None = None
    cert: Path | None = None
    """Client certificate (mutual TLS)."""
    key: Path | None = None
    ca: Path | None = None
    """CA certificate that signed the gateway's certificate."""


class JxClient:
    """GetDocument, PutDocument and ConfirmDocument against one JX server, as ``sender``."""

    def __init__(self, server: str, *, sender: str, timeout: float, credentials: Credentials) -> None:
        self.server = server
        self.sender = sender
        self.timeout = timeout
        self.credentials = credentials
        self._http: Any = None
        self._service: Any = None

    def get_document(self, receiver_id: str, folder: Path) -> Fetched | None:
        """The next document for ``receiver_id``, verified in a hidden file in ``folder``; None if none waits."""
        try:
            return get_document(self._session(), self.server, receiver_id, message_header(self.sender),
                                folder=folder, timeout=self.timeout)
        except RoundFailure as exc:
            if exc.kind is Kind.HTTP and exc.status in _FATAL_STATUS:
                exc.fatal = True
            raise

    def put_document(self, **values: str | bytes) -> bool:
        """PutDocument through zeep (the whole document in memory); its boolean result."""
        return bool(self._call("PutDocument", **values)["body"]["PutDocumentResult"])

    def put_streamed(self, fields: dict[str, str], data: Iterable[bytes]) -> bool:
        """PutDocument with ``data`` read and base64-encoded piece by piece (:mod:`gateway.jx.send`)."""
        return put_streamed(self._session(), self.server, message_header(self.sender), fields, data,
                            timeout=self.timeout)

    def confirm_document(self, message_id: str, sender_id: str, receiver_id: str) -> bool:
        """ConfirmDocument; ``False`` when it was confirmed already."""
        answer = self._call("ConfirmDocument", messageId=message_id, senderId=sender_id, receiverId=receiver_id)
        return bool(answer["body"]["ConfirmDocumentResult"])

    def _call(self, operation: str, **values: Any) -> Any:
        import requests
        import zeep.exceptions
        from lxml import etree

        service = self._client()
        try:
            return getattr(service, operation)(**values, _soapheaders={"MessageHeader": message_header(self.sender)})
        except requests.RequestException as exc:
            raise RoundFailure(Kind.NETWORK, f"{operation}: {describe(exc, timeout=self.timeout)}") from exc
        except zeep.exceptions.Fault as exc:
            code = _fault_code(exc)
            raise RoundFailure(Kind.FAULT, f"{operation}: the gateway answered with a fault: "
                               f"{code + ': ' if code else ''}{fit(str(exc.message or ''))}",
                               fatal=code in ("Unauthorized", "Forbidden")) from exc
        except zeep.exceptions.TransportError as exc:
            if isinstance(exc.__cause__, MalformedMessage):  # our PrologGuard refused the answer
                raise RoundFailure(Kind.PARSE, f"{operation}: {fit(exc.__cause__.reason)}") from exc
            raise RoundFailure(Kind.HTTP, f"{operation}: HTTP {exc.status_code}", status=exc.status_code,
                               fatal=exc.status_code in _FATAL_STATUS) from exc
        except (zeep.exceptions.Error, etree.XMLSyntaxError, KeyError, TypeError) as exc:
            raise RoundFailure(Kind.PARSE, f"{operation}: the answer is not a JX answer "
                               f"({fit(str(exc) or type(exc).__name__, 60)})") from exc

    def _session(self) -> Any:
        if self._http is None:
            import requests

            session = requests.Session()
            c = self.credentials
            if c.user is not None:
                session.auth = (c.user, c.password or "")
            if c.cert is not None:
                session.cert = (str(c.cert), str(c.key)) if c.key is not None else str(c.cert)
            if c.ca is not None:
                session.verify = str(c.ca)
            self._http = session
        return self._http

    def _client(self) -> Any:
        if self._service is None:
            import zeep

            transport = _guarded_transport(session=self._session(), timeout=30, operation_timeout=self.timeout)
            wsdl = str(resources.files("schemas").joinpath("jx2007.wsdl"))
            settings = zeep.Settings(forbid_dtd=True, forbid_entities=True, forbid_external=True)
            client = zeep.Client(wsdl, transport=transport, settings=settings)  # type: ignore[no-untyped-call]
            self._service = client.create_service(_BINDING, self.server)  # type: ignore[no-untyped-call]
        return self._service


def _fault_code(fault: Any) -> str:
    """bmrgw's ``<g:Error code="…"/>`` in the fault detail, else the faultcode's local name."""
    detail = getattr(fault, "detail", None)
    if detail is not None:
        for element in detail.iter():
            if isinstance(element.tag, str) and element.tag.endswith("}Error") and element.get("code"):
                return str(element.get("code"))
    code = str(getattr(fault, "code", "") or "")
    return code.rpartition(":")[2] if code else ""


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
