"""bmrgw pki: the certificates carry the right extensions and work in real TLS handshakes."""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from ruamel.yaml import YAML

from gateway.security.pki import Issued, issue, load_ca, make_ca, make_set

from .certs import DevPki, dev_pki  # noqa: F401  (fixture)
from .conftest import BMRGW

__all__ = ["dev_pki"]


def load(issued: Issued) -> x509.Certificate:
    return x509.load_pem_x509_certificate(issued.cert.read_bytes())


def ext(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.Extension[x509.ExtensionType]:
    return cert.extensions.get_extension_for_class(kind)


def test_ca_is_a_self_signed_ca(dev_pki: DevPki) -> None:
    ca = load(dev_pki.ca)
    ca.verify_directly_issued_by(ca)
    bc = ext(ca, x509.BasicConstraints)
    assert bc.critical and isinstance(bc.value, x509.BasicConstraints) and bc.value.ca is True
    ku = ext(ca, x509.KeyUsage).value
    assert isinstance(ku, x509.KeyUsage) and ku.key_cert_sign and ku.crl_sign


def test_server_certificate_extensions(dev_pki: DevPki) -> None:
    cert = load(dev_pki.server)
    cert.verify_directly_issued_by(load(dev_pki.ca))
    assert ext(cert, x509.BasicConstraints).value == x509.BasicConstraints(ca=False, path_length=None)
    ku = ext(cert, x509.KeyUsage).value
    assert isinstance(ku, x509.KeyUsage) and ku.digital_signature and ku.key_encipherment and not ku.key_cert_sign
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]  # type: ignore[call-overload]
    san = ext(cert, x509.SubjectAlternativeName).value
    assert isinstance(san, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert dev_pki.server.subject == "CN=server"


def test_client_and_signing_certificates(dev_pki: DevPki) -> None:
    client = load(dev_pki.client)
    assert list(ext(client, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]  # type: ignore[call-overload]
    assert dev_pki.client.subject == "CN=client"
    signing = load(dev_pki.signing)
    ku = ext(signing, x509.KeyUsage).value
    assert isinstance(ku, x509.KeyUsage) and ku.digital_signature and ku.content_commitment
    assert not ku.key_encipherment
    with pytest.raises(x509.ExtensionNotFound):
        ext(signing, x509.ExtendedKeyUsage)


def test_keys_are_private_to_the_owner(dev_pki: DevPki) -> None:
    assert stat.S_IMODE(dev_pki.server.key.stat().st_mode) == 0o600
    assert stat.S_IMODE(dev_pki.ca.key.stat().st_mode) == 0o600


def test_expired_certificates_are_expired(dev_pki: DevPki) -> None:
    import datetime as dt
    now = dt.datetime.now(dt.timezone.utc)
    assert load(dev_pki.server_expired).not_valid_after_utc < now
    assert load(dev_pki.client_expired).not_valid_after_utc < now
    assert load(dev_pki.server).not_valid_after_utc > now + dt.timedelta(days=300)


def test_validity_of_less_than_a_day_is_refused(tmp_path: Path) -> None:
    from gateway.errors import GatewayError
    with pytest.raises(GatewayError, match="at least 1 day"):
        make_ca(tmp_path, days=0)


# -- real handshakes --------------------------------------------------------------

async def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext,
                    host: str = "localhost") -> bytes:
    """Open a TLS connection to a loopback echo server; returns what it answered."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(await reader.readexactly(4))
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx,
                                                       server_hostname=host)
        writer.write(b"ping")
        answer = await reader.read(4)
        writer.close()
        return answer
    finally:
        server.close()
        await server.wait_closed()


def client_context(ca: Issued, cert: Issued | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca.cert))
    if cert is not None:
        ctx.load_cert_chain(cert.cert, cert.key)
    return ctx


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
async def test_server_certificate_verifies_for_its_hosts(dev_pki: DevPki, host: str) -> None:
    assert await handshake(dev_pki.server_context(), client_context(dev_pki.ca), host) == b"ping"


@pytest.mark.parametrize(("cert", "problem"), [
    ("server_expired", "certificate has expired"),
    ("server_wrong_host", "Hostname mismatch"),
    ("other_server", "unable to get local issuer certificate"),
    ("self_signed", "self-signed certificate"),
])
async def test_bad_server_certificates_fail_verification(dev_pki: DevPki, cert: str, problem: str) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match=problem):
        await handshake(dev_pki.server_context(getattr(dev_pki, cert)), client_context(dev_pki.ca))


async def test_client_certificate_passes_mutual_tls(dev_pki: DevPki) -> None:
    server = dev_pki.server_context(client_ca=dev_pki.ca)
    assert await handshake(server, client_context(dev_pki.ca, dev_pki.client)) == b"ping"


@pytest.mark.parametrize("cert", [None, "client_expired", "other_client"])
async def test_bad_client_certificates_fail_mutual_tls(dev_pki: DevPki, cert: str | None) -> None:
    server = dev_pki.server_context(client_ca=dev_pki.ca)
    client = client_context(dev_pki.ca, getattr(dev_pki, cert) if cert else None)
    # TLS 1.3: the server's refusal may arrive only after the client's handshake finished,
    # as an alert or a closed connection instead of the echo.
    try:
        answer = await handshake(server, client)
    except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError):
        answer = b""
    assert answer == b""


# -- the command ------------------------------------------------------------------

def test_pki_command_makes_a_set_and_prints_a_snippet(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    run = subprocess.run([*BMRGW, "pki", "--out", str(out), "--client", "juki-app", "--signing", "juki-sign"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["ca.pem", "ca-key.pem", "server.pem", "server-key.pem", "juki-app.pem",
                            "juki-app-key.pem", "juki-sign.pem", "juki-sign-key.pem"])
    assert "CN=juki-app" in run.stdout
    snippet = YAML(typ="safe").load(run.stdout[run.stdout.index("gateway:"):])
    assert Path(snippet["gateway"]["tls"]["cert"]) == out / "server.pem"
    assert snippet["clients"]["juki-app"]["cert_subject"] == "CN=juki-app"
    assert Path(snippet["endpoints"]["example"]["ca"]) == out / "ca.pem"
    client = x509.load_pem_x509_certificate((out / "juki-app.pem").read_bytes())
    client.verify_directly_issued_by(load(load_ca(out)))


def test_pki_command_reuses_the_existing_ca(tmp_path: Path) -> None:
    first = make_set(tmp_path, servers=(), clients=(), signers=())
    before = first["ca"].cert.read_bytes()
    again = make_set(tmp_path, servers=("gw",), clients=(), signers=())
    assert again["ca"].cert.read_bytes() == before
    load(again["gw"]).verify_directly_issued_by(load(first["ca"]))


def test_issue_into_another_folder(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    made = issue(ca, "client", "x", folder=tmp_path / "elsewhere")
    assert made.cert == tmp_path / "elsewhere" / "x.pem" and made.key.exists()


def test_pki_help_explains() -> None:
    run = subprocess.run([*BMRGW, "pki", "--help"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "development CA" in run.stdout and "--out" in run.stdout


def test_ec_signing_certificates_have_p256_keys(tmp_path: Path) -> None:
    """make_set(ec_signers=...) — what the wss-1k bench signs with: a P-256 key, the signing profile,
    the key file private, and the gateway's Signer accepts it (and signs with ecdsa-sha256)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from gateway.ns import ECDSA_SHA256
    from gateway.security.dsig import method_for
    from gateway.security.wss import Signer

    made = make_set(tmp_path, servers=(), clients=(), signers=("rsa-sign",), ec_signers=("ec-sign",))
    cert = x509.load_pem_x509_certificate(made["ec-sign"].cert.read_bytes())
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey) and isinstance(public.curve, ec.SECP256R1)
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.content_commitment and not usage.key_encipherment
    assert stat.S_IMODE(made["ec-sign"].key.stat().st_mode) == 0o600
    key = serialization.load_pem_private_key(made["ec-sign"].key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    signer = Signer.load(made["ec-sign"].key.read_bytes(), made["ec-sign"].cert.read_bytes())
    assert method_for(signer.key) == ECDSA_SHA256
    assert not isinstance(x509.load_pem_x509_certificate(made["rsa-sign"].cert.read_bytes()).public_key(),
                          ec.EllipticCurvePublicKey)


def test_pki_command_makes_p256_signing_keys_when_asked(tmp_path: Path) -> None:
    """`--signing-key-type p256`: the signing certificates get P-256 keys (the cheaper WS-Security
    signature of README "WS-Security"), TLS certificates stay RSA-2048; the default stays RSA."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    out = tmp_path / "certs"
    run = subprocess.run([*BMRGW, "pki", "--out", str(out), "--signing", "juki-sign", "--signing", "dc-sign",
                          "--signing-key-type", "p256"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    for name in ("juki-sign", "dc-sign"):
        key = x509.load_pem_x509_certificate((out / f"{name}.pem").read_bytes()).public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1), name
        assert f"CN={name}" in run.stdout.split(f"{name}.pem")[1].split("\n")[0] and \
            run.stdout.split(f"{name}-key.pem, ")[1].startswith("P-256)")
    for name in ("server", "client"):
        tls = x509.load_pem_x509_certificate((out / f"{name}.pem").read_bytes()).public_key()
        assert isinstance(tls, rsa.RSAPublicKey) and tls.key_size == 2048, name
    default = subprocess.run([*BMRGW, "pki", "--out", str(tmp_path / "rsa")], capture_output=True, text=True,
                             timeout=60)
    assert default.returncode == 0, default.stderr
    assert isinstance(x509.load_pem_x509_certificate((tmp_path / "rsa" / "sign.pem").read_bytes()).public_key(),
                      rsa.RSAPublicKey)
    wrong = subprocess.run([*BMRGW, "pki", "--out", str(tmp_path / "x"), "--signing-key-type", "p384"],
                           capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2 and "invalid choice" in wrong.stderr and "p256" in wrong.stderr
