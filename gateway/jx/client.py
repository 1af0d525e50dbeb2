"""The three JX calls as ``bmrgw poll`` makes them, every failure a :class:`RoundFailure` of its kind.

GetDocument is streamed to disk (:mod:`gateway.jx.fetch`); PutDocument is
streamed from disk and ConfirmDocument is a small call (:mod:`gateway.jx.send`),
all over one ``requests`` session whose credentials, client certificate and
CA are set once.  Requests are written as the shipped ``jx2007.wsdl``
describes them, in the namespace the partner uses; no WSDL is fetched from
the server and no SOAP library builds a document in memory.  What requests
and lxml raise is translated in those modules into one short line.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..ns import JX
from .failure import Kind, RoundFailure
from .fetch import Fetched, get_document, message_header
from .send import confirm, put_streamed

__all__ = ["Credentials", "JxClient"]

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
    """GetDocument, PutDocument and ConfirmDocument against one JX server, as ``sender``, in ``namespace``."""

    def __init__(self, server: str, *, sender: str, timeout: float, credentials: Credentials,
                 namespace: str = JX) -> None:
        self.server = server
        self.sender = sender
        self.timeout = timeout
        self.credentials = credentials
        self.namespace = namespace
        self._http: Any = None

    def get_document(self, receiver_id: str, folder: Path) -> Fetched | None:
        """The next document for ``receiver_id``, verified in a hidden file in ``folder``; None if none waits."""
        try:
            return get_document(self._session(), self.server, receiver_id, message_header(self.sender),
                                folder=folder, timeout=self.timeout, namespace=self.namespace)
        except RoundFailure as exc:
            if exc.kind is Kind.HTTP and exc.status in _FATAL_STATUS:
                exc.fatal = True
            raise

    def put_streamed(self, fields: dict[str, str], data: Iterable[bytes]) -> bool:
        """PutDocument with ``data`` read and base64-encoded piece by piece; its boolean result."""
        return put_streamed(self._session(), self.server, message_header(self.sender), fields, data,
                            timeout=self.timeout, namespace=self.namespace)

    def confirm_document(self, message_id: str, sender_id: str, receiver_id: str) -> bool:
        """ConfirmDocument; ``False`` when it was confirmed already."""
        return confirm(self._session(), self.server, message_header(self.sender), message_id, sender_id,
                       receiver_id, timeout=self.timeout, namespace=self.namespace)

    def _session(self) -> Any:
        if self._http is None:
            import requests
            import requests.auth

            session = requests.Session()
            c = self.credentials
            if c.user is not None:
                # RFC 7617 charset=UTF-8, as the gateway reads it: requests would encode str as latin-1
                # and fail on a Japanese password.
                session.auth = requests.auth.HTTPBasicAuth(c.user.encode("utf-8"), (c.password or "").encode("utf-8"))
            if c.cert is not None:
                session.cert = (str(c.cert), str(c.key)) if c.key is not None else str(c.cert)
            if c.ca is not None:
                session.verify = str(c.ca)
                # requests lets $REQUESTS_CA_BUNDLE / $CURL_CA_BUNDLE override Session.verify (requests
                # issue 3829): pin the configured CA where each request is sent.
                session.mount("https://", _pinned_adapter(str(c.ca)))
            self._http = session
        return self._http


def _pinned_adapter(ca: str) -> Any:
    """An HTTPS adapter that verifies against ``ca`` whatever the environment says."""
    import requests.adapters

    class Pinned(requests.adapters.HTTPAdapter):
        def send(self, request: Any, stream: bool = False, timeout: Any = None, verify: bool | str = True,
                 cert: Any = None, proxies: Any = None) -> Any:
            return super().send(request, stream=stream, timeout=timeout, verify=ca, cert=cert, proxies=proxies)

    return Pinned()
