"""Inbound TLS: the server's certificate, and client certificates for mutual TLS.

Standard §4.5 (B) secure communication: PKI server certificates, site
authentication by client certificate.  TLS 1.2 is the oldest version
offered, with forward-secret AEAD cipher suites only; TLS 1.3 suites are
OpenSSL's defaults, all strong.  With ``gateway.tls.client_ca`` every
caller must present a certificate that CA issued, valid now, before a byte
of HTTP is read; :mod:`gateway.security.auth` then maps its subject to a client.
"""

from __future__ import annotations

import ssl

from gateway.errors import ConfigError
from routing.settings import TlsSettings

__all__ = ["server_context", "TLS12_CIPHERS"]

#: TLS 1.2 suites: ECDHE/DHE key exchange (forward secrecy) with AES-GCM or ChaCha20-Poly1305.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS:!RC4:!3DES"


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
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"gateway.tls.client_ca: cannot load {tls.client_ca}: {_why(exc)}") from exc
    return context


def _why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)
