"""Check an issued certificate and install it atomically (``bmrgw pki install``).

Go-live step two (README "Bringing a site live"): the certificate the
registration office returned is refused unless it belongs to the key made
with ``bmrgw pki csr`` (exit 3), its chain leads to a configured trust
anchor (exit 4), it and its issuers are valid now (exit 5), and it may be
used for its role — serverAuth for ``gateway.tls``, clientAuth for an
endpoint's client certificate (exit 6).

Trust anchors (the LGPKI and GPKI root certificates, fetched by the
operator from the CAs' own sites and compared by fingerprint) are files in
the ``trust/`` folder next to endpoints.yaml, or named with ``--trust``.

Installing writes each file beside its target, fsyncs it and renames it
over the target; the file it replaces is kept as ``TARGET.prev``.  The key
is installed before the certificate, so the running gateway (which watches
both, :mod:`gateway.serve.certs`) never pairs a new certificate with an old
key: it waits until the pair matches.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID

from gateway.durable import fsync_dir, private_open
from gateway.errors import CertificateRefused, UsageError
from gateway.security.dsig import weak_key

__all__ = ["Role", "Checked", "read_certificates", "read_anchors", "check", "install", "describe",
           "add_install_command", "TRUST_FOLDER"]

Role = Literal["server", "client"]
TRUST_FOLDER = "trust"
_ANCHOR_SUFFIXES = (".pem", ".crt", ".cer", ".der")
_PURPOSE = {"server": ExtendedKeyUsageOID.SERVER_AUTH, "client": ExtendedKeyUsageOID.CLIENT_AUTH}
_WRONG_KEY, _BROKEN_CHAIN, _NOT_VALID, _WRONG_USE = 3, 4, 5, 6


@dataclass(frozen=True, kw_only=True)
class Checked:
    """A certificate that passed every check, with the path that proves it."""

    leaf: x509.Certificate
    path: tuple[x509.Certificate, ...]
    """Leaf, intermediates, trust anchor."""


def read_certificates(path: Path) -> list[x509.Certificate]:
    """Every certificate in ``path`` (a PEM bundle or one DER certificate); :class:`UsageError` if none."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return (x509.load_pem_x509_certificates(data) if b"-----BEGIN" in data
                else [x509.load_der_x509_certificate(data)])
    except ValueError as exc:
        raise UsageError(f"{path} holds no certificate (PEM or DER): {exc}") from exc


def read_anchors(places: Iterable[Path]) -> list[x509.Certificate]:
    """The trust anchors in the given files and folders (``*.pem``, ``*.crt``, ``*.cer``, ``*.der``)."""
    found: list[x509.Certificate] = []
    for place in places:
        files = sorted(p for p in place.iterdir() if p.suffix.lower() in _ANCHOR_SUFFIXES) if place.is_dir() else [place]
        for file in files:
            found.extend(read_certificates(file))
    return found


def check(chain: Sequence[x509.Certificate], key: PrivateKeyTypes, anchors: Sequence[x509.Certificate], *,
          role: Role, now: dt.datetime | None = None) -> Checked:
    """``chain[0]`` checked against ``key``, ``anchors``, the time and ``role``; :class:`CertificateRefused` if not."""
    leaf = chain[0]
    if leaf.public_key() != key.public_key():
        raise CertificateRefused(f"the certificate ({_name(leaf)}) does not belong to this key: install it with the "
                                 "key its CSR was made with", _WRONG_KEY)
    if (weak := weak_key(leaf.public_key())) is not None:
        raise CertificateRefused(f"the certificate ({_name(leaf)}) has {weak}", _WRONG_KEY)
    path = _path(leaf, list(chain[1:]), list(anchors))
    moment = now or dt.datetime.now(dt.timezone.utc)
    for cert in path:
        if not cert.not_valid_before_utc <= moment <= cert.not_valid_after_utc:
            what = "expired" if moment > cert.not_valid_after_utc else "not yet valid"
            raise CertificateRefused(
                f"{_name(cert)} is {what} (valid {cert.not_valid_before_utc:%Y-%m-%d %H:%M} to "
                f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC)", _NOT_VALID)
    _check_use(leaf, role)
    return Checked(leaf=leaf, path=tuple(path))


def _path(leaf: x509.Certificate, pool: list[x509.Certificate],
          anchors: list[x509.Certificate]) -> list[x509.Certificate]:
    """Leaf → intermediates from ``pool`` → an anchor, each signature verified."""
    path = [leaf]
    while len(path) <= 8:
        at = path[-1]
        anchor = next((a for a in anchors if _signed(at, a)), None)
        if anchor is not None:
            return path if at == anchor else [*path, anchor]
        step = next((c for c in pool if c not in path and _signed(at, c) and _is_ca(c)), None)
        if step is None:
            known = "; ".join(_name(a) for a in anchors) or "none configured"
            raise CertificateRefused(
                f"the chain breaks at {_name(at)}: its issuer ({at.issuer.rfc4514_string()}) is neither in --chain "
                f"nor a trust anchor (anchors: {known}); pass the CA certificates with --chain, or put the "
                "LGPKI/GPKI root in the trust folder", _BROKEN_CHAIN)
        path.append(step)
    raise CertificateRefused(f"the chain of {_name(leaf)} is longer than 8 certificates", _BROKEN_CHAIN)


def _signed(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _check_use(leaf: x509.Certificate, role: Role) -> None:
    try:
        purposes = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return  # no EKU: any purpose (RFC 5280 4.2.1.12); older LGPKI certificates carry none
    if _PURPOSE[role] not in purposes:
        raise CertificateRefused(f"{_name(leaf)} may not be used as a TLS {role} certificate: its extendedKeyUsage "
                                 f"is {', '.join(p._name for p in purposes)}", _WRONG_USE)


def _name(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or f"serial {cert.serial_number:x}"


def describe(checked: Checked, now: dt.datetime | None = None) -> list[str]:
    """What an operator checks before going live: names, dates, key usage, the chain."""
    leaf = checked.leaf
    left = leaf.not_valid_after_utc - (now or dt.datetime.now(dt.timezone.utc))
    lines = [f"subject    {_name(leaf)}", f"issuer     {leaf.issuer.rfc4514_string()}",
             f"serial     {leaf.serial_number:x}",
             f"valid      {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} to {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
             f" ({left.days} days left)",
             f"key        {_key_text(leaf)}", f"key usage  {_usage(leaf)}"]
    try:
        hosts = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        lines.append(f"names      {', '.join(str(h.value) for h in hosts)}")
    except x509.ExtensionNotFound:
        pass
    lines.extend(f"chain      {'  ' * i}{_name(c)}" for i, c in enumerate(checked.path))
    return lines


def _key_text(cert: x509.Certificate) -> str:
    key = cert.public_key()
    size = getattr(key, "key_size", 0)
    curve = getattr(getattr(key, "curve", None), "name", None)
    return f"EC {curve}" if curve else f"RSA {size} bits"


def _usage(cert: x509.Certificate) -> str:
    words: list[str] = []
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        words += [n for n in ("digital_signature", "content_commitment", "key_encipherment", "key_agreement",
                              "key_cert_sign", "crl_sign") if getattr(ku, n)]
    except x509.ExtensionNotFound:
        words.append("(no keyUsage)")
    try:
        words += [p._name for p in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value]
    except x509.ExtensionNotFound:
        pass
    return ", ".join(words)


def install(checked: Checked, key: PrivateKeyTypes, *, cert_to: Path, key_to: Path) -> None:
    """Key first, then the certificate with its intermediates (not the anchor), each atomically; the
    replaced files are kept as ``*.prev``."""
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    if not (key_to.exists() and key_to.read_bytes() == key_pem):
        _replace(key_to, key_pem)
    sent = checked.path[:-1] if len(checked.path) > 1 else checked.path
    _replace(cert_to, b"".join(c.public_bytes(serialization.Encoding.PEM) for c in sent))


def _replace(target: Path, data: bytes) -> None:
    temp = target.with_name(f".{target.name}.new")
    with os.fdopen(private_open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    if target.exists():
        keep = target.with_name(f".{target.name}.prev.new")
        keep.unlink(missing_ok=True)
        os.link(target, keep)  # the old file stays in place until the new one replaces it
        os.replace(keep, target.with_name(f"{target.name}.prev"))
    os.replace(temp, target)
    fsync_dir(target.parent)


# -- bmrgw pki install ------------------------------------------------------------------

def add_install_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``bmrgw pki install``."""
    p = commands.add_parser(
        "install", help="check an issued certificate (key, chain, dates, usage) and install it atomically",
        description="Check that CERT belongs to KEY, that its chain (CERT's own bundle plus --chain) leads to a "
        "trust anchor (the trust/ folder next to --config, or --trust), that it is valid now and fits its "
        "role; then install it over gateway.tls.cert/key (or endpoints.NAME.cert/key with --endpoint, or "
        "--cert-to/--key-to), keeping the previous files as *.prev. A running gateway switches to it for new "
        "connections within a second. Exit 3: wrong key; 4: broken chain; 5: expired or not yet valid; "
        "6: not usable for the role.")
    p.add_argument("cert", type=Path, metavar="CERT", help="the issued certificate (PEM, may include the chain, or DER)")
    p.add_argument("--key", type=Path, metavar="KEY", help="its private key (default: the installed key)")
    p.add_argument("--chain", type=Path, action="append", default=[], metavar="FILE",
                   help="intermediate CA certificate(s), PEM or DER (repeatable)")
    p.add_argument("--trust", type=Path, action="append", metavar="PATH",
                   help="trust anchor file or folder (default: trust/ next to --config)")
    p.add_argument("--config", type=Path, metavar="FILE", help="endpoints.yaml naming where the files go")
    p.add_argument("--endpoint", metavar="NAME", help="install as endpoints.NAME's client certificate")
    p.add_argument("--cert-to", type=Path, metavar="FILE", help="install the certificate here")
    p.add_argument("--key-to", type=Path, metavar="FILE", help="install the key here")
    p.set_defaults(run=_install)


def _install(args: argparse.Namespace) -> int:
    role: Role = "client" if args.endpoint else "server"
    cert_to, key_to = _targets(args)
    key_path = args.key or key_to
    key = _read_key(key_path)
    trust = args.trust or ([args.config.resolve().parent / TRUST_FOLDER] if args.config else [])
    if not trust or not all(t.exists() for t in trust):
        raise UsageError(f"no trust anchors at {', '.join(map(str, trust)) or '(none given)'}: put the LGPKI/GPKI "
                         f"root certificates in {TRUST_FOLDER}/ next to endpoints.yaml, or pass --trust")
    chain = read_certificates(args.cert) + [c for f in args.chain for c in read_certificates(f)]
    checked = check(chain, key, read_anchors(trust), role=role)
    for line in describe(checked):
        print(line)
    install(checked, key, cert_to=cert_to, key_to=key_to)
    print(f"installed  {cert_to} and {key_to} (previous files kept as *.prev); a running gateway uses them for "
          "new connections within a second")
    return 0


def _targets(args: argparse.Namespace) -> tuple[Path, Path]:
    if args.cert_to and args.key_to:
        return Path(args.cert_to), Path(args.key_to)
    if args.config is None:
        raise UsageError("say where to install: --config endpoints.yaml (gateway.tls or --endpoint NAME), "
                         "or --cert-to FILE --key-to FILE")
    from routing.config import load_config  # only this command needs the whole config loader
    config = load_config(args.config)
    if args.endpoint:
        outbound = getattr(config.endpoints.get(args.endpoint), "outbound", None)
        if outbound is None or outbound.cert is None or outbound.key is None:
            raise UsageError(f"endpoints.{args.endpoint} has no cert and key in {args.config} to replace")
        return Path(outbound.cert), Path(outbound.key)
    if config.gateway.tls is None:
        raise UsageError(f"{args.config} has no gateway.tls to install into; add cert and key paths first")
    return Path(config.gateway.tls.cert), Path(config.gateway.tls.key)


def _read_key(path: Path | None) -> PrivateKeyTypes:
    if path is None:
        raise UsageError("--key KEY: the private key the CSR was made with")
    try:
        return serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise UsageError(f"cannot read the key {path}: {exc.strerror or exc}") from exc
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{path} is not an unencrypted PEM private key: {exc}") from exc
