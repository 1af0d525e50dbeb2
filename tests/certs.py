"""Real certificates for TLS and WS-Security tests, made once per session by gateway.security.pki.

Import the fixture into a test module (``from tests.certs import dev_pki``)
to get a :class:`DevPki`: a CA with good, expired and wrong-host server
certificates, client and signing certificates, and a second, untrusted CA
with its own server and client certificates.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID

from gateway.security.pki import Issued, issue, make_ca

LONG_AGO = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)


@dataclass(frozen=True)
class DevPki:
    folder: Path
    ca: Issued
    server: Issued
    """CN=server, SAN localhost and 127.0.0.1."""
    server_expired: Issued
    server_wrong_host: Issued
    """Valid, but only for other.example."""
    client: Issued
    """CN=client, clientAuth."""
    client_expired: Issued
    signing: Issued
    """CN=sign: a WS-Security signing certificate."""
    signing2: Issued
    """CN=sign2: another signing certificate from the same CA."""
    other_ca: Issued
    """A CA nobody trusts."""
    other_server: Issued
    """A server certificate issued by other_ca."""
    other_client: Issued
    """A client certificate issued by other_ca."""
    self_signed: Issued
    """A self-signed server certificate for localhost (its own CA)."""

    def server_context(self, cert: Issued | None = None, *, client_ca: Issued | None = None) -> ssl.SSLContext:
        """A TLS server context; with ``client_ca`` a client certificate is required."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert = cert or self.server
        ctx.load_cert_chain(cert.cert, cert.key)
        if client_ca is not None:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(client_ca.cert)
        return ctx


def make_dev_pki(folder: Path) -> DevPki:
    # Valid from yesterday: tests may fix "now" (at import) before this session fixture runs.
    since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)
    ca = make_ca(folder / "dev", start=since)
    other = make_ca(folder / "other", name="untrusted CA", start=since)
    return DevPki(
        folder=folder, ca=ca,
        server=issue(ca, "server", "server", start=since),
        server_expired=issue(ca, "server", "server-expired", start=LONG_AGO, days=30),
        server_wrong_host=issue(ca, "server", "server-wrong-host", hosts=["other.example"], start=since),
        client=issue(ca, "client", "client", start=since),
        client_expired=issue(ca, "client", "client-expired", start=LONG_AGO, days=30),
        signing=issue(ca, "signing", "sign", start=since),
        signing2=issue(ca, "signing", "sign2", start=since),
        other_ca=other,
        other_server=issue(other, "server", "server", start=since),
        other_client=issue(other, "client", "client", start=since),
        self_signed=_self_signed(folder / "lonely"),
    )


def _self_signed(folder: Path) -> Issued:
    """A server certificate for localhost/127.0.0.1 signed by its own key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "self-signed.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "self-signed-key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return Issued(cert=folder / "self-signed.pem", key=folder / "self-signed-key.pem",
                  subject="CN=localhost", not_after=cert.not_valid_after_utc)


def signing_with(ca: Issued, name: str, key: CertificateIssuerPrivateKeyTypes, folder: Path) -> Issued:
    """A WS-Security signing certificate for ``key`` (any type or size: EC, RSA-1024), issued by ``ca``."""
    ca_key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    assert isinstance(ca_key, rsa.RSAPrivateKey)
    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / f"{name}-key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return Issued(cert=folder / f"{name}.pem", key=folder / f"{name}-key.pem", subject=f"CN={name}",
                  not_after=cert.not_valid_after_utc)


def ec_signing(ca: Issued, name: str, folder: Path, curve: ec.EllipticCurve | None = None) -> Issued:
    """An ECDSA signing certificate (P-256 unless ``curve`` says otherwise)."""
    return signing_with(ca, name, ec.generate_private_key(curve or ec.SECP256R1()), folder)


_shared: list[DevPki] = []


@pytest.fixture(scope="session")
def dev_pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    # Each module imports this fixture, which makes it one fixture per module; the
    # certificates are made once for the whole session instead, early, so that
    # module-level "now" times of a long run stay inside their validity.
    if not _shared:
        _shared.append(make_dev_pki(tmp_path_factory.mktemp("pki")))
    return _shared[0]
