"""A stand-in LGPKI registration office for the go-live tests: a root CA, an intermediate CA, and
certificates issued for CSRs made by ``bmrgw pki csr``."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from gateway.security.csr import make_request

_NOW = dt.datetime.now(dt.timezone.utc)


@dataclass(frozen=True)
class Office:
    root: Path
    """PEM root certificate (the trust anchor)."""
    intermediate: Path
    """PEM intermediate CA certificate (the chain sent with each issued certificate)."""
    root_cert: x509.Certificate
    root_key: rsa.RSAPrivateKey
    inter_cert: x509.Certificate
    inter_key: rsa.RSAPrivateKey

    def sign(self, csr: Path, out: Path, *, purpose: str = "server", days: int = 365,
             start: dt.datetime | None = None, by_root: bool = False) -> Path:
        """The certificate for the CSR in ``csr`` (PEM), written to ``out``."""
        request = x509.load_pem_x509_csr(csr.read_bytes())
        issuer, key = (self.root_cert, self.root_key) if by_root else (self.inter_cert, self.inter_key)
        begin = start or _NOW - dt.timedelta(days=1)
        eku = ExtendedKeyUsageOID.SERVER_AUTH if purpose == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder().subject_name(request.subject).issuer_name(issuer.subject)
            .public_key(request.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(begin).not_valid_after(begin + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(request.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
        )
        for ext in request.extensions:
            if isinstance(ext.value, x509.SubjectAlternativeName):
                builder = builder.add_extension(ext.value, critical=False)
        out.write_bytes(builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
        return out


def _ca(subject: str, issuer: tuple[x509.Certificate, rsa.RSAPrivateKey] | None
        ) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name.from_rfc4514_string(subject)
    signer_name, signer_key = (issuer[0].subject, issuer[1]) if issuer else (name, key)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(signer_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_NOW - dt.timedelta(days=2)).not_valid_after(_NOW + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None if issuer is None else 0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()), critical=False)
        .sign(signer_key, hashes.SHA256())
    )
    return cert, key


def make_office(folder: Path, name: str = "LGPKI test") -> Office:
    """A root CA and an intermediate CA in ``folder`` (``root.pem``, ``intermediate.pem``)."""
    folder.mkdir(parents=True, exist_ok=True)
    root = _ca(f"OU={name} Root,O=LGPKI,C=JP", None)
    inter = _ca(f"OU={name} Application CA,O=LGPKI,C=JP", root)
    (folder / "root.pem").write_bytes(root[0].public_bytes(serialization.Encoding.PEM))
    (folder / "intermediate.pem").write_bytes(inter[0].public_bytes(serialization.Encoding.PEM))
    return Office(root=folder / "root.pem", intermediate=folder / "intermediate.pem",
                  root_cert=root[0], root_key=root[1], inter_cert=inter[0], inter_key=inter[1])


def issue_pair(office: Office, folder: Path, name: str, *, purpose: str = "server", days: int = 365,
               start: dt.datetime | None = None, subject: str | None = None) -> tuple[Path, Path]:
    """A key and its certificate from ``office`` (key and CSR by gateway.security.csr), in ``folder``:
    ``NAME.pem`` holds the certificate and the intermediate, ``NAME-key.pem`` the key."""
    request = make_request(folder, name, x509.Name.from_rfc4514_string(subject or f"CN={name},O=LGPKI,C=JP"),
                           hosts=["localhost", "127.0.0.1"])
    cert = office.sign(request.pem, folder / f"{name}.cer", purpose=purpose, days=days, start=start)
    pem = folder / f"{name}.pem"
    pem.write_bytes(cert.read_bytes() + office.intermediate.read_bytes())
    return pem, request.key
