"""Inbound TLS: the server's certificate, and client certificates for mutual TLS.

Standard §4.5 (B) secure communication: PKI server certificates, site
authentication by client certificate.  TLS 1.2 is the oldest version
offered, with forward-secret AEAD cipher suites only; TLS 1.3 suites are
OpenSSL's defaults, all strong.  With ``gateway.tls.client_ca`` every
caller must present a certificate that CA issued, valid now, before a byte
of HTTP is read; :mod:`gateway.security.auth` then maps its subject to a client.

With ``gateway.tls.crl`` OpenSSL also checks each client certificate against
the certificate revocation list of its CA (``VERIFY_CRL_CHECK_LEAF``): a
revoked one is cut off during the handshake.  The file (PEM, one or more
CRLs, or DER) is checked when loaded — each CRL must be signed by a CA of
``client_ca`` — by :func:`reload_crl`, which can also add a new version to a
context.  OpenSSL uses the CRL with the latest ``lastUpdate`` for a CA, so a
reissued CRL takes over for new handshakes; an expired CRL makes every
handshake from that CA fail (fail closed), as RFC 5280 wants.

Certificates change while the gateway runs (README "Bringing a site live"):
the listening socket holds a :class:`ReloadingContext`, which hands each new
connection to the context in force; :mod:`gateway.serve.certs` builds a
whole new one with :func:`server_context` when a file changes (or on
SIGHUP) and swaps it in one assignment.  Connections already open keep the
context they started with; a context that cannot be built is never swapped
in.
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
import ssl
import tempfile
import warnings
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.utils import CryptographyDeprecationWarning

from gateway.errors import ConfigError
from gateway.security.dsig import weak_key
from routing.settings import TlsSettings

__all__ = ["server_context", "reload_crl", "ReloadingContext", "client_key_problem", "certificate_key_problem",
           "TLS12_CIPHERS", "SECURITY_LEVEL"]

log = logging.getLogger(__name__)
_PEM_CRL_END = b"-----END X509 CRL-----"

#: OpenSSL's security level (SSL_CTX_set_security_level(3)): 2 refuses, during the handshake, client
#: certificates with RSA keys under 2048 bits or EC keys under 224; pinned here, not left to how
#: Python or the system's openssl.cnf was built (OpenSSL's own default is 1: RSA-1024 passes).
SECURITY_LEVEL = 2
#: TLS 1.2 suites: ECDHE/DHE key exchange (forward secrecy) with AES-GCM or ChaCha20-Poly1305.
TLS12_CIPHERS = ("ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS:!RC4:!3DES"
                 f":@SECLEVEL={SECURITY_LEVEL}")


def server_context(tls: TlsSettings) -> ssl.SSLContext:
    """The SSL context ``bmrgw serve`` listens with; :class:`ConfigError` names a bad file."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        context.load_cert_chain(tls.cert, tls.key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"gateway.tls: cannot use certificate {tls.cert} with key {tls.key}: {_why(exc)}") from exc
    if tls.client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        try:
            context.load_verify_locations(cafile=tls.client_ca)
            cas = x509.load_pem_x509_certificates(Path(tls.client_ca).read_bytes())
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise ConfigError(f"gateway.tls.client_ca: cannot load {tls.client_ca}: {_why(exc)}") from exc
        for ca in cas:
            if weak := certificate_key_problem(ca):
                raise ConfigError(f"gateway.tls.client_ca: the CA {ca.subject.rfc4514_string()} in {tls.client_ca} "
                                  f"has {weak}")
    if tls.crl is not None:
        reload_crl(context, tls)
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return context


class ReloadingContext(ssl.SSLContext):
    """The server context the listening socket holds: each new connection uses :attr:`current`.

    asyncio and uvloop make one ``SSLObject`` per accepted connection through
    :meth:`wrap_bio`; delegating that call is what lets a new certificate,
    client CA or CRL take over without closing the listening socket.
    """

    current: ssl.SSLContext

    def __new__(cls, first: ssl.SSLContext) -> ReloadingContext:
        made = super().__new__(cls, ssl.PROTOCOL_TLS_SERVER)
        made.current = first
        return made

    def __init__(self, first: ssl.SSLContext) -> None:  # noqa: D107 - __new__ did the work
        pass

    def wrap_bio(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, server_side: bool = False,
                 server_hostname: str | bytes | None = None, session: ssl.SSLSession | None = None) -> ssl.SSLObject:
        return self.current.wrap_bio(incoming, outgoing, server_side=server_side,
                                     server_hostname=server_hostname, session=session)

    def wrap_socket(self, sock: socket.socket, server_side: bool = False, do_handshake_on_connect: bool = True,
                    suppress_ragged_eofs: bool = True, server_hostname: str | bytes | None = None,
                    session: ssl.SSLSession | None = None) -> ssl.SSLSocket:
        return self.current.wrap_socket(sock, server_side=server_side, do_handshake_on_connect=do_handshake_on_connect,
                                        suppress_ragged_eofs=suppress_ragged_eofs, server_hostname=server_hostname,
                                        session=session)


def reload_crl(context: ssl.SSLContext, tls: TlsSettings) -> int:
    """Read ``gateway.tls.crl`` again into ``context``; the number of CRLs read.

    :class:`ConfigError` (and ``context`` unchanged) when the file cannot be read, is not
    a CRL, or holds one that no CA of ``client_ca`` signed.
    """
    assert tls.crl is not None and tls.client_ca is not None
    crls = _checked_crls(Path(tls.crl), Path(tls.client_ca))
    pem = b"".join(crl.public_bytes(serialization.Encoding.PEM) for crl in crls)
    # The ssl module loads CRLs from files only (cadata takes certificates), and only PEM.
    with tempfile.NamedTemporaryFile(suffix=".pem") as file:
        file.write(pem)
        file.flush()
        try:
            context.load_verify_locations(cafile=file.name)
        except ssl.SSLError as exc:
            raise ConfigError(f"gateway.tls.crl: cannot load {tls.crl}: {_why(exc)}") from exc
    now = dt.datetime.now(dt.timezone.utc)
    for crl in crls:
        if crl.next_update_utc is not None and crl.next_update_utc < now:
            log.warning("gateway.tls.crl: the CRL of %s expired at %s: clients of that CA are refused until a "
                        "current one is loaded (SIGHUP)", crl.issuer.rfc4514_string(), crl.next_update_utc)
    return len(crls)


def _checked_crls(path: Path, client_ca: Path) -> list[x509.CertificateRevocationList]:
    try:
        data = path.read_bytes()
        cas = x509.load_pem_x509_certificates(client_ca.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"gateway.tls.crl: cannot read {path} or client_ca: {_why(exc)}") from exc
    try:
        if _PEM_CRL_END in data:
            crls = [x509.load_pem_x509_crl(block + _PEM_CRL_END) for block in data.split(_PEM_CRL_END)[:-1]]
        else:
            crls = [x509.load_der_x509_crl(data)]
    except ValueError as exc:
        raise ConfigError(f"gateway.tls.crl: {path} is not a CRL (PEM or DER): {exc}") from exc
    for crl in crls:
        if not any(_issued(crl, ca) for ca in cas):
            raise ConfigError(f"gateway.tls.crl: the CRL of {crl.issuer.rfc4514_string()} in {path} is not issued "
                              f"by a CA of client_ca ({client_ca})")
    return crls


def _issued(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    key = ca.public_key()
    return (ca.subject == crl.issuer and isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey))
            and crl.is_signature_valid(key))


def _why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)



def certificate_key_problem(cert: x509.Certificate) -> str | None:
    """:func:`client_key_problem` of ``cert``'s key."""
    with warnings.catch_warnings():  # cryptography warns on loading a DSA key, which is refused anyway
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        key = cert.public_key()
    return client_key_problem(key)


def client_key_problem(key: PublicKeyTypes) -> str | None:
    """Why a client certificate's (or its CA's) key is too weak, or ``None``: the WS-Security signing
    rule (:func:`gateway.security.dsig.weak_key`: RSA ≥ 2048 bits, EC ≥ 256), plus Ed25519/Ed448,
    which TLS 1.3 clients may use.  DSA is refused at any size: OpenSSL still takes a DSA client
    certificate over TLS 1.2 at security level 2, and nothing else in the gateway trusts DSA."""
    if isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return None
    if isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
        return weak_key(key)
    # Anything else is refused; DSA by name (touching cryptography's dsa module warns that it is deprecated).
    if "DSA" in type(key).__name__ and isinstance(size := getattr(key, "key_size", None), int):
        return f"a DSA key of {size} bits (DSA client certificates are refused; use RSA ≥ 2048 or EC P-256)"
    return f"a {type(key).__name__} (only RSA, EC and EdDSA client keys are accepted)"
