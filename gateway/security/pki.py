"""A development PKI: a CA plus server, client and signing certificates (``bmrgw pki``).

Municipalities use LGPKI-style X.509 certificates in production; this module
makes look-alikes so an operator (and the test suite) can try TLS, mutual TLS
and WS-Security signatures locally in minutes.  Every certificate carries the
extensions a strict verifier checks: basicConstraints, keyUsage,
extendedKeyUsage (serverAuth / clientAuth), subjectAltName for servers, and
subject/authority key identifiers.  Keys are RSA 2048 (what LGPKI and every
WS-Security stack accept) unless ECDSA P-256 is asked for (``key_type="ec"``,
signing certificates for a cheaper WS-Security signature), written
unencrypted with mode 0600: these are development keys, never production ones.

For production certificates, ``bmrgw pki csr`` (:mod:`.csr`) and ``bmrgw pki
install`` (:mod:`.install`) are the go-live steps.

Files are ``<name>.pem`` (certificate) and ``<name>-key.pem`` (key) in one
folder, the names SPEC.md's endpoints.yaml example uses.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.errors import GatewayError

from .csr import add_csr_command
from .install import add_install_command

__all__ = ["Issued", "Kind", "KeyType", "make_ca", "load_ca", "issue", "make_set", "add_pki_command"]

Kind = Literal["server", "client", "signing"]
KINDS: tuple[Kind, ...] = ("server", "client", "signing")
#: RSA-2048, or ECDSA on P-256 (the CA itself is always RSA-2048).
KeyType = Literal["rsa", "ec"]
_Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

CA_NAME = "ca"
DEFAULT_HOSTS = ("localhost", "127.0.0.1")
DEFAULT_DAYS = 365
#: Certificates are back-dated a little so a peer whose clock runs slightly behind accepts them.
_BACKDATE = dt.timedelta(minutes=5)


@dataclass(frozen=True, kw_only=True)
class Issued:
    """One certificate and its private key on disk."""

    cert: Path
    """PEM certificate."""
    key: Path
    """PEM private key (PKCS#8, unencrypted)."""
    subject: str
    """RFC 4514 subject, as ``clients.*.cert_subject`` matches it (``CN=juki-app``)."""
    not_after: dt.datetime
    """End of validity (UTC)."""


def make_ca(folder: str | Path, *, name: str = "bmrgw development CA", days: int = 3650,
            start: dt.datetime | None = None) -> Issued:
    """A self-signed CA (``ca.pem``, ``ca-key.pem``) in ``folder``."""
    key = _new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "bmrgw development"),
                         x509.NameAttribute(NameOID.COMMON_NAME, name)])
    begin, end = _validity(days, start)
    builder = (
        _base(subject, subject, key.public_key(), begin, end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True, digital_signature=True), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
    )
    return _write(Path(folder), CA_NAME, builder.sign(key, hashes.SHA256()), key)


def load_ca(folder: str | Path) -> Issued:
    """The CA made earlier by :func:`make_ca` in ``folder``."""
    folder = Path(folder)
    cert = x509.load_pem_x509_certificate((folder / f"{CA_NAME}.pem").read_bytes())
    return Issued(cert=folder / f"{CA_NAME}.pem", key=folder / f"{CA_NAME}-key.pem",
                  subject=cert.subject.rfc4514_string(), not_after=cert.not_valid_after_utc)


def issue(ca: Issued, kind: Kind, name: str, *, folder: str | Path | None = None,
          hosts: Sequence[str] = DEFAULT_HOSTS, days: int = DEFAULT_DAYS,
          start: dt.datetime | None = None, key_type: KeyType = "rsa") -> Issued:
    """A ``kind`` certificate for ``name`` signed by ``ca``, written next to the CA (or into ``folder``).

    ``hosts`` (DNS names or IP addresses) become a server certificate's
    subjectAltName.  ``start`` and ``days`` set the validity; a ``start``
    in the past with few ``days`` makes an already-expired certificate.
    ``key_type`` ``"ec"`` gives the certificate a P-256 key instead of RSA-2048.
    """
    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    ca_key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    if not isinstance(ca_key, rsa.RSAPrivateKey):
        raise GatewayError(f"{ca.key}: the CA key must be an RSA key")
    key: _Key = ec.generate_private_key(ec.SECP256R1()) if key_type == "ec" else _new_key()
    begin, end = _validity(days, start)
    builder = (
        _base(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]), ca_cert.subject,
              key.public_key(), begin, end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    builder = _PROFILES[kind](builder, hosts)
    return _write(Path(folder) if folder is not None else ca.cert.parent, name,
                  builder.sign(ca_key, hashes.SHA256()), key)


def make_set(folder: str | Path, *, servers: Sequence[str] = ("server",), clients: Sequence[str] = ("client",),
             signers: Sequence[str] = ("sign",), hosts: Sequence[str] = DEFAULT_HOSTS,
             days: int = DEFAULT_DAYS, ec_signers: Sequence[str] = ()) -> dict[str, Issued]:
    """The CA of ``folder`` (made when missing) plus the named certificates; name → files.
    ``ec_signers`` are signing certificates with ECDSA P-256 keys."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ca = load_ca(folder) if (folder / f"{CA_NAME}.pem").exists() else make_ca(folder)
    made = {CA_NAME: ca}
    wanted: list[tuple[Kind, Sequence[str]]] = [("server", servers), ("client", clients), ("signing", signers)]
    for kind, names in wanted:
        for name in names:
            made[name] = issue(ca, kind, name, hosts=hosts, days=days)
    for name in ec_signers:
        made[name] = issue(ca, "signing", name, hosts=hosts, days=days, key_type="ec")
    return made


# -- certificate profiles --------------------------------------------------------

def _server(builder: x509.CertificateBuilder, hosts: Sequence[str]) -> x509.CertificateBuilder:
    return (
        builder.add_extension(_key_usage(digital_signature=True, key_encipherment=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([_general_name(h) for h in hosts]), critical=False)
    )


def _client(builder: x509.CertificateBuilder, hosts: Sequence[str]) -> x509.CertificateBuilder:
    return (
        builder.add_extension(_key_usage(digital_signature=True, key_encipherment=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )


def _signing(builder: x509.CertificateBuilder, hosts: Sequence[str]) -> x509.CertificateBuilder:
    # A message-signing certificate: digital signatures and non-repudiation only, no TLS use.
    return builder.add_extension(_key_usage(digital_signature=True, content_commitment=True), critical=True)


_PROFILES: dict[Kind, Callable[[x509.CertificateBuilder, Sequence[str]], x509.CertificateBuilder]] = {
    "server": _server, "client": _client, "signing": _signing,
}


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _key_usage(*, digital_signature: bool = False, content_commitment: bool = False,
               key_encipherment: bool = False, key_cert_sign: bool = False,
               crl_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature, content_commitment=content_commitment,
        key_encipherment=key_encipherment, data_encipherment=False, key_agreement=False,
        key_cert_sign=key_cert_sign, crl_sign=crl_sign, encipher_only=False, decipher_only=False,
    )


def _base(subject: x509.Name, issuer: x509.Name, public: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
          begin: dt.datetime, end: dt.datetime) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(issuer).public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(begin).not_valid_after(end)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )


def _validity(days: int, start: dt.datetime | None) -> tuple[dt.datetime, dt.datetime]:
    if days < 1:
        raise GatewayError(f"validity must be at least 1 day, not {days}")
    begin = start if start is not None else dt.datetime.now(dt.timezone.utc) - _BACKDATE
    return begin, begin + dt.timedelta(days=days)


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write(folder: Path, name: str, cert: x509.Certificate, key: _Key) -> Issued:
    folder.mkdir(parents=True, exist_ok=True)
    key_path, cert_path = folder / f"{name}-key.pem", folder / f"{name}.pem"
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Issued(cert=cert_path, key=key_path, subject=cert.subject.rfc4514_string(),
                  not_after=cert.not_valid_after_utc)


# -- bmrgw pki --------------------------------------------------------------------

def add_pki_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``bmrgw pki``."""
    p = commands.add_parser(
        "pki", help="make a development CA and server, client and signing certificates",
        description="Make a development CA (reused when DIR already has ca.pem and ca-key.pem) and "
        "certificates signed by it: server certificates for TLS, client certificates for mutual TLS, "
        "signing certificates for WS-Security. Writes NAME.pem and NAME-key.pem into DIR and prints an "
        "endpoints.yaml snippet using them. For trying things locally; production uses LGPKI certificates.",
    )
    p.add_argument("--out", type=Path, default=Path("certs"), metavar="DIR", help="folder (default: ./certs)")
    p.add_argument("--server", action="append", type=_file_name, metavar="NAME", help="server certificate NAME (default: server)")
    p.add_argument("--client", action="append", type=_file_name, metavar="NAME", help="client certificate NAME (default: client)")
    p.add_argument("--signing", action="append", type=_file_name, metavar="NAME", help="signing certificate NAME (default: sign)")
    p.add_argument("--host", action="append", metavar="HOST",
                   help="DNS name or IP address for server certificates (default: localhost and 127.0.0.1)")
    p.add_argument("--days", type=int, default=DEFAULT_DAYS, help=f"validity in days (default: {DEFAULT_DAYS})")
    p.add_argument("--signing-key-type", choices=("rsa2048", "p256"), default="rsa2048",
                   help="key of the signing certificates: rsa2048 (default; what every WS-Security stack "
                        "accepts) or p256 (ECDSA P-256: a WS-Security exchange costs the gateway about "
                        "15 %% less CPU, and the partner must accept ecdsa-sha256); TLS certificates stay RSA-2048")
    p.set_defaults(run=_pki)
    steps = p.add_subparsers(title="go-live steps (production certificates)", metavar="{csr,install}")
    add_csr_command(steps)
    add_install_command(steps)


def _file_name(name: str) -> str:
    """argparse type: a certificate NAME becomes NAME.pem in DIR, so it may not hold a path."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
        raise argparse.ArgumentTypeError(f"{name!r}: a certificate name is letters, digits, '.', '_' and '-' "
                                         "(it becomes NAME.pem in --out DIR)")
    return name


def _pki(args: argparse.Namespace) -> int:
    servers, clients, signers = args.server or ["server"], args.client or ["client"], args.signing or ["sign"]
    ec = args.signing_key_type == "p256"
    made = make_set(args.out, servers=servers, clients=clients, signers=() if ec else signers,
                    ec_signers=signers if ec else (), hosts=args.host or DEFAULT_HOSTS, days=args.days)
    for name, issued in made.items():
        kind = "P-256" if ec and name in signers else "RSA-2048"
        print(f"{issued.cert}  {issued.subject}  until {issued.not_after:%Y-%m-%d}  (key {issued.key}, {kind})")
    print()
    print(snippet(made, servers[0], clients[0], signers[0]))
    return 0


def snippet(made: dict[str, Issued], server: str, client: str, signer: str) -> str:
    """An endpoints.yaml fragment that uses the certificates just made."""
    ca, srv, cli, sig = made[CA_NAME], made[server], made[client], made[signer]
    return f"""# endpoints.yaml snippet using these files:
gateway:
  tls: {{cert: {srv.cert}, key: {srv.key}, client_ca: {ca.cert}}}
clients:
  {client}:
    cert_subject: "{cli.subject}"
    allow: ["*"]
    wss: {{verify: {sig.cert}}}
endpoints:
  example:
    url: https://localhost:9443/service
    ca: {ca.cert}
    cert: {cli.cert}
    key: {cli.key}
    wss: {{sign: {{key: {sig.key}, cert: {sig.cert}}}}}"""
