"""A key and a certificate signing request for an LGPKI (or other CA's) certificate (``bmrgw pki csr``).

Go-live step one (README "Bringing a site live"): the gateway's server (or
client) key is made here and never leaves the host; the CSR goes to the
organisation's LGPKI registration office (登録分局), which returns the
certificate that ``bmrgw pki install`` then checks and installs.

LGPKI application certificates (Web server / アプリケーション認証局) name
their holder as ``C=JP, O=LGPKI, OU=<organisation>, OU=<section>,
CN=<host FQDN>``; the registration office says exactly which ``OU`` values
it wants, so ``--subject`` takes any RFC 4514 name and only insists on a
``CN``.  The host name(s) also go into a subjectAltName request, which
today's TLS clients check instead of the CN.  Keys are RSA (2048 bits or
more, what LGPKI issues for) or ECDSA P-256.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from gateway.durable import private_dir, private_open
from gateway.errors import UsageError

__all__ = ["KeyType", "KEY_TYPES", "Request", "parse_subject", "make_request", "add_csr_command"]

KeyType = Literal["rsa2048", "rsa3072", "rsa4096", "p256"]
KEY_TYPES: tuple[KeyType, ...] = ("rsa2048", "rsa3072", "rsa4096", "p256")

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
_HOST = re.compile(r"(?=.{1,253}$)[A-Za-z0-9*]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")


@dataclass(frozen=True, kw_only=True)
class Request:
    """The files one ``bmrgw pki csr`` wrote."""

    key: Path
    """PEM private key (PKCS#8, mode 0600)."""
    pem: Path
    """The CSR in PEM (``NAME.csr``), what most registration offices take."""
    der: Path
    """The same CSR in DER (``NAME.csr.der``), for offices whose forms want binary."""
    subject: str
    """RFC 4514 subject requested."""


def parse_subject(text: str) -> x509.Name:
    """An RFC 4514 subject (``CN=gw.city.example.lg.jp,OU=Kikaku,O=LGPKI,C=JP``); :class:`UsageError` if bad."""
    try:
        name = x509.Name.from_rfc4514_string(text)
    except ValueError as exc:
        raise UsageError(f"--subject {text!r} is not an RFC 4514 name (CN=host,OU=...,O=LGPKI,C=JP): {exc}") from exc
    if not name.get_attributes_for_oid(NameOID.COMMON_NAME):
        raise UsageError(f"--subject {text!r} has no CN: LGPKI names the host (FQDN) in the CN")
    for country in name.get_attributes_for_oid(NameOID.COUNTRY_NAME):
        if len(str(country.value)) != 2:
            raise UsageError(f"--subject: C={country.value!r} must be a two-letter country code (C=JP)")
    return name


def make_request(folder: Path, name: str, subject: x509.Name, *, key_type: KeyType = "rsa2048",
                 hosts: Sequence[str] = ()) -> Request:
    """A new key and its CSR in ``folder``; never overwrites a key (a CSR may be pending for it)."""
    private_dir(folder)
    paths = Request(key=folder / f"{name}-key.pem", pem=folder / f"{name}.csr", der=folder / f"{name}.csr.der",
                    subject=subject.rfc4514_string())
    for path in (paths.key, paths.pem, paths.der):
        if path.exists():
            raise UsageError(f"{path} exists: a CSR may be pending for its key; choose another --name or folder")
    key = new_key(key_type)
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    names = list(hosts) or _cn_host(subject)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName([_general_name(h) for h in names]),
                                        critical=False)
    csr = builder.sign(key, hashes.SHA256())
    _write_key(paths.key, key)
    paths.pem.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    paths.der.write_bytes(csr.public_bytes(serialization.Encoding.DER))
    return paths


def new_key(key_type: KeyType) -> PrivateKey:
    """A fresh private key of ``key_type``."""
    if key_type == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[3:]))


def _cn_host(subject: x509.Name) -> list[str]:
    """The CN as the only subjectAltName when it is a host name or address (it usually is)."""
    cn = str(subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
    try:
        ipaddress.ip_address(cn)
        return [cn]
    except ValueError:
        return [cn] if _HOST.fullmatch(cn) else []


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _write_key(path: Path, key: PrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    with os.fdopen(private_open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "wb") as fh:
        fh.write(pem)
        fh.flush()
        os.fsync(fh.fileno())


# -- bmrgw pki csr ---------------------------------------------------------------------

def add_csr_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``bmrgw pki csr``."""
    p = commands.add_parser(
        "csr", help="make a key and a certificate signing request (CSR) for the LGPKI registration office",
        description="Make a new private key (mode 0600, it never leaves this host) and a CSR for it, in PEM "
        "(NAME.csr) and DER (NAME.csr.der). Send the CSR to your LGPKI registration office; install the "
        "certificate it returns with 'bmrgw pki install'.")
    p.add_argument("--subject", required=True, metavar="DN",
                   help="RFC 4514 subject, e.g. 'CN=gw.city.example.lg.jp,OU=Johoseisakuka,OU=Example City,O=LGPKI,C=JP'")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for NAME-key.pem, NAME.csr, NAME.csr.der")
    p.add_argument("--name", default="server", help="file name stem (default: server)")
    p.add_argument("--key-type", choices=KEY_TYPES, default="rsa2048", help="key algorithm and size (default: rsa2048)")
    p.add_argument("--host", action="append", metavar="HOST",
                   help="DNS name or IP address for the subjectAltName (default: the CN)")
    p.set_defaults(run=_csr)


def _csr(args: argparse.Namespace) -> int:
    subject = parse_subject(args.subject)
    made = make_request(args.out, args.name, subject, key_type=args.key_type, hosts=args.host or ())
    print(f"key  {made.key}  (mode 0600; keep it here, never send it)")
    print(f"CSR  {made.pem}  (PEM)  and  {made.der}  (DER)")
    print(f"subject  {made.subject}")
    print(f"next: send the CSR to the registration office, then: bmrgw pki install CERT --key {made.key} "
          "--chain CA-CHAIN --config endpoints.yaml")
    return 0
