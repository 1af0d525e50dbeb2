"""How the gateway presents itself to an endpoint or peer (SPEC.md ``endpoints.*.ca|cert|key|basic|wss``).

Parsed once with the rest of endpoints.yaml; PEM files are read and checked
at load time, so a wrong key is a config error, not a failed request.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from yarl import URL

from gateway.errors import ConfigError
from gateway.security.dsig import weak_key

from . import fields as read

__all__ = ["Outbound", "BasicCredentials", "WssSign", "OUTBOUND_KEYS", "outbound_from"]


@dataclass(frozen=True, kw_only=True)
class BasicCredentials:
    user: str
    """HTTP Basic user name sent to the upstream."""
    password: str = field(repr=False)
    """The password, read at config load from ``password_env`` or ``password_file``."""
    source: str
    """Where the password came from (for messages; never the password itself)."""


@dataclass(frozen=True, kw_only=True)
class WssSign:
    key: Path
    """PEM private key that signs outgoing messages."""
    cert: Path
    """PEM certificate of that key, sent as the BinarySecurityToken."""


@dataclass(frozen=True, kw_only=True)
class Outbound:
    """How the gateway talks to one upstream (endpoint or peer): TLS trust, client identity.

    Equal values share one TLS context in the upstream seam; ``fingerprint``
    covers the files' contents, so a reload after a certificate was replaced
    builds a fresh context.
    """

    ca: Path | None = None
    """Trust anchor(s) for an https upstream; ``None`` trusts the system's CAs."""
    cert: Path | None = None
    """Client certificate presented to the upstream (mutual TLS)."""
    key: Path | None = None
    """Private key of ``cert``."""
    basic: BasicCredentials | None = None
    """HTTP Basic credentials sent to the upstream."""
    wss_sign: WssSign | None = None
    """Sign outgoing messages with WS-Security (endpoints only)."""
    fingerprint: str = ""
    """SHA-256 over the contents of the files above, as loaded."""


OUTBOUND_KEYS = ("ca", "cert", "key", "basic")


def outbound_from(m: Mapping[str, Any], path: str, url: str, base: Path, *, signing: bool) -> Outbound:
    """The ``ca``/``cert``/``key``/``basic`` (and for endpoints ``wss``) keys of one upstream."""
    if not any(k in m for k in (*OUTBOUND_KEYS, "wss")):
        return Outbound()
    digest = hashlib.sha256()
    tls = {k: _pem_file(m[k], f"{path}.{k}", base, digest) for k in ("ca", "cert", "key") if k in m}
    if tls and URL(url).scheme != "https":
        raise ConfigError(f"{path}: {', '.join(sorted(tls))} only apply to an https:// url")
    if ("cert" in tls) != ("key" in tls):
        raise ConfigError(f"{path}: a client certificate needs both cert and key")
    _check_pem(tls, path)
    wss = _wss_sign(m["wss"], f"{path}.wss", base, digest) if "wss" in m else None
    basic = _basic(m["basic"], f"{path}.basic", base) if "basic" in m else None
    return Outbound(ca=tls.get("ca"), cert=tls.get("cert"), key=tls.get("key"), basic=basic,
                    wss_sign=wss, fingerprint=digest.hexdigest())


def _pem_file(value: Any, path: str, base: Path, digest: Any) -> Path:
    file = Path(read.file(value, path, base))
    try:
        digest.update(file.read_bytes())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {file}: {exc.strerror or exc}") from exc
    return file


def _check_pem(files: Mapping[str, Path], path: str) -> None:
    """Refuse files that are not what their key says, so the mistake shows at load, not at first use."""
    loaded: dict[str, Any] = {}
    for key, file in files.items():
        data = file.read_bytes()
        try:
            if key == "key":
                loaded[key] = load_pem_private_key(data, password=None)
            else:
                loaded[key] = x509.load_pem_x509_certificates(data)[0]
        except (ValueError, TypeError) as exc:
            what = "an unencrypted PEM private key" if key == "key" else "PEM certificate(s)"
            raise ConfigError(f"{path}.{key}: {file} does not hold {what}: {exc}") from exc
    if "cert" in loaded and "key" in loaded and loaded["cert"].public_key() != loaded["key"].public_key():
        raise ConfigError(f"{path}: key {files['key']} does not belong to cert {files['cert']}")


def _check_strength(cert: Path, path: str) -> None:
    """A WS-Security signing key below RSA-2048 / P-256 is refused (issue 18, finding 9)."""
    weak = weak_key(x509.load_pem_x509_certificates(cert.read_bytes())[0].public_key())
    if weak is not None:
        raise ConfigError(f"{path}: {cert} has {weak}")


def _wss_sign(raw: Any, path: str, base: Path, digest: Any) -> WssSign:
    m = read.mapping(raw, path)
    read.known(m, path, {"sign"})
    sign = read.mapping(m.get("sign"), f"{path}.sign")
    read.known(sign, f"{path}.sign", {"key", "cert"})
    files = {k: _pem_file(sign.get(k), f"{path}.sign.{k}", base, digest) for k in ("key", "cert")}
    _check_pem(files, f"{path}.sign")
    _check_strength(files["cert"], f"{path}.sign")
    return WssSign(key=files["key"], cert=files["cert"])


def _basic(raw: Any, path: str, base: Path) -> BasicCredentials:
    m = read.mapping(raw, path)
    if "password" in m:
        raise ConfigError(f"{path}.password: a plain password does not belong in endpoints.yaml; "
                          "use password_env (an environment variable) or password_file")
    read.known(m, path, {"user", "password_env", "password_file"})
    user = read.string(m.get("user"), f"{path}.user")
    if ":" in user:
        raise ConfigError(f"{path}.user: HTTP Basic user names cannot contain ':'")
    if ("password_env" in m) == ("password_file" in m):
        raise ConfigError(f"{path}: needs exactly one of password_env or password_file")
    if "password_env" in m:
        var = read.string(m["password_env"], f"{path}.password_env")
        password = os.environ.get(var)
        if not password:
            raise ConfigError(f"{path}.password_env: environment variable {var} is not set or empty")
        return BasicCredentials(user=user, password=password, source=f"environment variable {var}")
    return BasicCredentials(user=user, password=_password_file(m["password_file"], path, base),
                            source=f"file {m['password_file']}")


def _password_file(value: Any, path: str, base: Path) -> str:
    file = Path(read.file(value, f"{path}.password_file", base))
    try:
        # One line; the trailing newline an editor adds is not part of the password.
        password = file.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}.password_file: cannot read {file}: {exc}") from exc
    if not password:
        raise ConfigError(f"{path}.password_file: {file} is empty")
    return password
