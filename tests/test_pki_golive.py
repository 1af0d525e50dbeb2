"""``bmrgw pki csr`` and ``bmrgw pki install``: a CSR signed by a test registration office installs and
serves; a wrong key, a broken chain, an expired certificate and a client-only certificate are refused."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from .conftest import BMRGW, GatewayFactory, write_yaml
from .golive import Office, make_office

SUBJECT = "CN=localhost,OU=Johoseisakuka,OU=Example City,O=LGPKI,C=JP"


def bmrgw(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BMRGW, *map(str, args)], capture_output=True, text=True, timeout=60)


@pytest.fixture
def office(tmp_path: Path) -> Office:
    return make_office(tmp_path / "office")


def site(tmp_path: Path, office: Office, *, key_type: str = "rsa2048") -> dict[str, Path]:
    """A config folder with trust/root.pem, and a CSR made by bmrgw pki csr in csr/."""
    conf = tmp_path / "conf"
    (conf / "trust").mkdir(parents=True)
    (conf / "trust" / "lgpki-root.pem").write_bytes(office.root.read_bytes())
    done = bmrgw("pki", "csr", "--subject", SUBJECT, "--out", tmp_path / "csr", "--host", "localhost",
                 "--host", "127.0.0.1", "--key-type", key_type)
    assert done.returncode == 0, done.stderr
    return {"conf": conf, "csr": tmp_path / "csr" / "server.csr", "key": tmp_path / "csr" / "server-key.pem"}


def config(tmp_path: Path, conf: Path) -> Path:
    path = conf / "endpoints.yaml"
    write_yaml(path, {"gateway": {"name": "gw-golive", "db": f"sqlite:///{tmp_path}/gl.db",
                                  "tls": {"cert": str(conf / "tls" / "server.pem"),
                                          "key": str(conf / "tls" / "server-key.pem")}},
                      "endpoints": {"demo": {"url": "http://127.0.0.1:9/x"}}})
    return path


@pytest.mark.parametrize("key_type", ["rsa2048", "p256"])
def test_csr_writes_a_private_key_and_the_request_in_pem_and_der(tmp_path: Path, key_type: str) -> None:
    done = bmrgw("pki", "csr", "--subject", SUBJECT, "--out", tmp_path / "req", "--key-type", key_type)
    assert done.returncode == 0, done.stderr
    key_path = tmp_path / "req" / "server-key.pem"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    pem = x509.load_pem_x509_csr((tmp_path / "req" / "server.csr").read_bytes())
    der = x509.load_der_x509_csr((tmp_path / "req" / "server.csr.der").read_bytes())
    assert pem.public_bytes(serialization.Encoding.DER) == der.public_bytes(serialization.Encoding.DER)
    assert pem.is_signature_valid
    assert pem.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "LGPKI"
    assert {a.value for a in pem.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)} == \
        {"Example City", "Johoseisakuka"}
    assert pem.subject.get_attributes_for_oid(NameOID.COUNTRY_NAME)[0].value == "JP"
    assert pem.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == ["localhost"]
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert key.public_key() == pem.public_key()
    if key_type == "p256":
        assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    else:
        assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048


def test_csr_refuses_to_overwrite_a_key_and_a_subject_without_cn(tmp_path: Path) -> None:
    assert bmrgw("pki", "csr", "--subject", SUBJECT, "--out", tmp_path).returncode == 0
    before = (tmp_path / "server-key.pem").read_bytes()
    again = bmrgw("pki", "csr", "--subject", SUBJECT, "--out", tmp_path)
    assert again.returncode == 2 and "exists" in again.stderr and "Traceback" not in again.stderr
    assert (tmp_path / "server-key.pem").read_bytes() == before
    no_cn = bmrgw("pki", "csr", "--subject", "O=LGPKI,C=JP", "--out", tmp_path / "b")
    assert no_cn.returncode == 2 and "no CN" in no_cn.stderr


async def test_a_csr_signed_by_the_office_installs_and_serves(
        tmp_path: Path, office: Office, gateway: GatewayFactory) -> None:
    files = site(tmp_path, office)
    cert = office.sign(files["csr"], tmp_path / "issued.cer")
    conf = files["conf"]
    (conf / "tls").mkdir()
    # The gateway ran until now on a development certificate: that is what install replaces.
    old = make_office(tmp_path / "old")
    write_key(conf / "tls" / "server-key.pem", files["key"])
    (conf / "tls" / "server.pem").write_bytes(old.sign(files["csr"], tmp_path / "old.cer").read_bytes())
    path = config(tmp_path, conf)
    done = bmrgw("pki", "install", cert, "--key", files["key"], "--chain", office.intermediate, "--config", path)
    assert done.returncode == 0, done.stderr
    assert "valid" in done.stdout and "key_encipherment" in done.stdout and "serverAuth" in done.stdout
    assert "OU=LGPKI test Root" in done.stdout  # the chain up to the anchor is shown
    installed = x509.load_pem_x509_certificates((conf / "tls" / "server.pem").read_bytes())
    assert installed[0] == x509.load_pem_x509_certificate(cert.read_bytes())
    assert installed[1] == office.inter_cert  # the chain is served with it, the anchor is not
    assert (conf / "tls" / "server.pem.prev").read_bytes() == (tmp_path / "old.cer").read_bytes()
    assert stat.S_IMODE((conf / "tls" / "server-key.pem").stat().st_mode) == 0o600
    base = await gateway(load_yaml(path))
    served = await peer_certificate(base, office.root)
    assert served == installed[0]


def write_key(target: Path, source: Path) -> None:
    target.write_bytes(source.read_bytes())
    target.chmod(0o600)


def load_yaml(path: Path) -> dict[str, Any]:
    from ruamel.yaml import YAML
    data: dict[str, Any] = YAML(typ="safe", pure=True).load(path.read_text())
    return data


async def peer_certificate(base: str, anchor: Path) -> x509.Certificate:
    """The certificate a TLS client trusting only ``anchor`` is shown at ``base``."""
    host, port = base.removeprefix("https://").rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(anchor))
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port), ssl=context), 5)
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    await writer.wait_closed()
    return x509.load_der_x509_certificate(der)


def refused(tmp_path: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    conf = tmp_path / "conf"
    done = bmrgw("pki", "install", *args, "--trust", conf / "trust", "--cert-to", conf / "out.pem",
                 "--key-to", conf / "out-key.pem")
    assert "Traceback" not in done.stderr and done.stderr.startswith("bmrgw: ")
    assert not (conf / "out.pem").exists() and not (conf / "out-key.pem").exists()
    return done


def test_a_certificate_for_another_key_is_refused(tmp_path: Path, office: Office) -> None:
    files = site(tmp_path, office)
    cert = office.sign(files["csr"], tmp_path / "issued.cer")
    assert bmrgw("pki", "csr", "--subject", SUBJECT, "--out", tmp_path / "other").returncode == 0
    done = refused(tmp_path, cert, "--key", tmp_path / "other" / "server-key.pem", "--chain", office.intermediate)
    assert done.returncode == 3 and "does not belong to this key" in done.stderr


def test_a_broken_chain_is_refused(tmp_path: Path, office: Office) -> None:
    files = site(tmp_path, office)
    cert = office.sign(files["csr"], tmp_path / "issued.cer")
    done = refused(tmp_path, cert, "--key", files["key"])  # the intermediate is missing
    assert done.returncode == 4 and "chain breaks" in done.stderr and "Application CA" in done.stderr
    stranger = make_office(tmp_path / "stranger", "Stranger")
    done = refused(tmp_path, cert, "--key", files["key"], "--chain", stranger.intermediate)
    assert done.returncode == 4  # a CA of the same name shape that did not sign it does not help


def test_an_expired_certificate_is_refused(tmp_path: Path, office: Office) -> None:
    files = site(tmp_path, office)
    start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=40)
    cert = office.sign(files["csr"], tmp_path / "issued.cer", days=30, start=start)
    done = refused(tmp_path, cert, "--key", files["key"], "--chain", office.intermediate)
    assert done.returncode == 5 and "expired" in done.stderr and "CN=localhost" in done.stderr


def test_a_client_certificate_is_not_installed_as_the_server_certificate(tmp_path: Path, office: Office) -> None:
    files = site(tmp_path, office)
    cert = office.sign(files["csr"], tmp_path / "issued.cer", purpose="client")
    done = refused(tmp_path, cert, "--key", files["key"], "--chain", office.intermediate)
    assert done.returncode == 6 and "TLS server certificate" in done.stderr


def test_no_trust_anchor_is_a_usage_error(tmp_path: Path, office: Office) -> None:
    files = site(tmp_path, office)
    cert = office.sign(files["csr"], tmp_path / "issued.cer")
    done = bmrgw("pki", "install", cert, "--key", files["key"], "--trust", tmp_path / "nowhere",
                 "--cert-to", tmp_path / "o.pem", "--key-to", tmp_path / "o-key.pem")
    assert done.returncode == 2 and "no trust anchors" in done.stderr
