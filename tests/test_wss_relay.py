"""WS-Security through a running gateway: clients that must sign, endpoints that want signed messages,
and replays refused across gateway nodes sharing PostgreSQL."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from lxml import etree
from sqlalchemy import create_engine, func, select

from gateway.errors import Replay
from gateway.ns import DSIG
from gateway.security.passwords import hash_password
from gateway.security.pki import issue
from gateway.security.replay import REPLAY_TABLE, ReplayGuard
from gateway.security.wss import Signer, TimePolicy, sign_envelope, verify_envelope

from .certs import DevPki, dev_pki  # noqa: F401  (fixture)
from .conftest import GatewayFactory, RecordingBackend, message, soap11_headers
from .pg import pg_schema
from .test_auth import basic
from .test_relay import fault_of
from .xmlsec import ECDSA_SHA256, needs_xmlsec1, signed_by_xmlsec1, xmlsec_verify

__all__ = ["dev_pki"]

HASH = hash_password("pw")
ENVELOPE = message("valid/soap11-routing-header.xml")


def secured_config(tmp_path: Path, pki: DevPki, url: str, *, sign: bool = False) -> dict[str, Any]:
    demo: dict[str, Any] = {"url": url, "timeout": 5}
    if sign:
        demo["wss"] = {"sign": {"key": str(pki.signing2.key), "cert": str(pki.signing2.cert)}}
    return {
        "gateway": {"name": "gw-wss", "db": f"sqlite:///{tmp_path}/wss.db"},
        "clients": {
            "juki-app": {"basic": {"user": "juki", "password_hash": HASH}, "allow": ["*"], "senders": ["juki"],
                         "wss": {"verify": str(pki.signing.cert)}},
            "zei-app": {"basic": {"user": "zei", "password_hash": HASH}, "allow": ["*"], "senders": ["juki"]},
        },
        "endpoints": {"demo": demo},
    }


async def post(http: aiohttp.ClientSession, base: str, body: bytes, user: str = "juki") -> tuple[int, bytes]:
    async with http.post(f"{base}/soap", data=body, headers={**soap11_headers(), **basic(user, "pw")}) as resp:
        return resp.status, await resp.read()


def signed_now(pki: DevPki, *, at: dt.datetime | None = None) -> bytes:
    signer = Signer.load(pki.signing.key.read_bytes(), pki.signing.cert.read_bytes())
    return sign_envelope(ENVELOPE, signer, now=at or dt.datetime.now(dt.timezone.utc), ttl=300, max_bytes=1 << 20)


@needs_xmlsec1
async def test_signed_by_another_stack_is_relayed_unchanged(
    gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, dev_pki: DevPki,
    tmp_path: Path,
) -> None:
    base = await gateway(secured_config(tmp_path, dev_pki, backend.url))
    signed = signed_by_xmlsec1(ENVELOPE, dev_pki.signing)
    status, body = await post(http, base, signed)
    assert status == 200, body
    assert backend.seen[0].body == signed  # verified, then forwarded byte for byte


async def test_refusals_through_the_gateway(
    gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, dev_pki: DevPki,
    tmp_path: Path,
) -> None:
    base = await gateway(secured_config(tmp_path, dev_pki, backend.url))
    good = signed_now(dev_pki)
    assert (await post(http, base, good))[0] == 200
    cases = {
        "Replay": good,
        "InvalidSignature": signed_now(dev_pki).replace("住民記録".encode(), "改ざん".encode()),
        "Expired": signed_now(dev_pki, at=dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)),
    }
    for code, body in cases.items():
        status, answer = await post(http, base, body)
        assert (status, fault_of(answer)[1:]) == (400, ("soap:Client", code)), answer
    status, answer = await post(http, base, ENVELOPE)
    assert status == 400 and fault_of(answer)[2] == "InvalidSignature" and b"no wsse:Security header" in answer
    assert len(backend.seen) == 1  # nothing refused ever reached the endpoint


async def test_wrong_certificate_is_refused_and_logged(
    gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, dev_pki: DevPki,
    tmp_path: Path,
) -> None:
    base = await gateway(secured_config(tmp_path, dev_pki, backend.url))
    other = Signer.load(dev_pki.signing2.key.read_bytes(), dev_pki.signing2.cert.read_bytes())
    forged = sign_envelope(ENVELOPE, other, now=dt.datetime.now(dt.timezone.utc), ttl=300, max_bytes=1 << 20)
    status, answer = await post(http, base, forged)
    assert status == 400 and fault_of(answer)[2] == "InvalidSignature"
    assert b"CN=sign2" in answer and backend.seen == []


async def test_clients_without_wss_verify_need_no_signature(
    gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, dev_pki: DevPki,
    tmp_path: Path,
) -> None:
    base = await gateway(secured_config(tmp_path, dev_pki, backend.url))
    status, _ = await post(http, base, ENVELOPE, user="zei")
    assert status == 200 and backend.seen[0].body == ENVELOPE


@needs_xmlsec1
async def test_endpoint_with_wss_sign_gets_a_signed_message(
    gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, dev_pki: DevPki,
    tmp_path: Path,
) -> None:
    base = await gateway(secured_config(tmp_path, dev_pki, backend.url, sign=True))
    status, answer = await post(http, base, ENVELOPE, user="zei")
    assert status == 200, answer
    forwarded = backend.seen[0].body
    assert forwarded is not None and forwarded != ENVELOPE
    assert backend.seen[0].headers["Content-Length"] == str(len(forwarded))
    done = xmlsec_verify(forwarded, dev_pki.signing2)
    assert done.returncode == 0, done.stderr.decode()
    verify_envelope(forwarded, _cert(dev_pki.signing2), now=dt.datetime.now(dt.timezone.utc),
                    policy=TimePolicy(), max_bytes=1 << 20)


async def test_verify_inbound_then_sign_outbound(
    gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, dev_pki: DevPki,
    tmp_path: Path,
) -> None:
    base = await gateway(secured_config(tmp_path, dev_pki, backend.url, sign=True))
    status, answer = await post(http, base, signed_now(dev_pki))
    assert status == 200, answer
    forwarded = backend.seen[0].body
    assert forwarded is not None
    # The client's signature was checked here; the endpoint sees the gateway's.
    verify_envelope(forwarded, _cert(dev_pki.signing2), now=dt.datetime.now(dt.timezone.utc),
                    policy=TimePolicy(), max_bytes=1 << 20)


@needs_xmlsec1
async def test_ecdsa_p256_keys_on_both_sides(
    gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, dev_pki: DevPki,
    tmp_path: Path,
) -> None:
    """The bench's bmrgw-wss-ec: a P-256 client key verified inbound, a P-256 gateway key signing outbound;
    what the endpoint gets is ecdsa-sha256 and xmlsec1 verifies it (digests recomputed from the bytes)."""
    client = issue(dev_pki.ca, "signing", "ec-client", folder=tmp_path / "ec", key_type="ec")
    gw = issue(dev_pki.ca, "signing", "ec-gw", folder=tmp_path / "ec", key_type="ec")
    config = secured_config(tmp_path, dev_pki, backend.url)
    config["clients"]["juki-app"]["wss"] = {"verify": str(client.cert)}
    config["endpoints"]["demo"]["wss"] = {"sign": {"key": str(gw.key), "cert": str(gw.cert)}}
    base = await gateway(config)
    sent = sign_envelope(ENVELOPE, Signer.load(client.key.read_bytes(), client.cert.read_bytes()),
                         now=dt.datetime.now(dt.timezone.utc), ttl=300, max_bytes=1 << 20)
    assert ECDSA_SHA256.encode() in sent
    status, answer = await post(http, base, sent)
    assert status == 200, answer
    forwarded = backend.seen[0].body
    assert forwarded is not None
    methods = etree.fromstring(forwarded).findall(f".//{{{DSIG}}}SignatureMethod")
    assert [m.get("Algorithm") for m in methods] == [ECDSA_SHA256]
    done = xmlsec_verify(forwarded, gw)
    assert done.returncode == 0, done.stderr.decode()
    assert xmlsec_verify(forwarded, client).returncode != 0  # the gateway's signature, not the client's
    verify_envelope(forwarded, _cert(gw), now=dt.datetime.now(dt.timezone.utc), policy=TimePolicy(),
                    max_bytes=1 << 20)
    status, answer = await post(http, base, sent)  # and the same message again is a replay
    assert (status, fault_of(answer)[2]) == (400, "Replay") and len(backend.seen) == 1


def _cert(issued: Any) -> Any:
    from cryptography import x509
    return x509.load_pem_x509_certificate(issued.cert.read_bytes())


# -- the replay records ---------------------------------------------------------------------

def test_replay_guard_refuses_a_second_use_and_purges_old_records(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path}/replay.db")
    guard = ReplayGuard(engine, purge_every=0)
    guard.ensure_schema()
    now = time.time()
    guard.remember_now("a" * 64, now - 10, now - 20)   # already past its keep-until
    guard.remember_now("b" * 64, now + 600, now)
    with pytest.raises(Replay, match="already accepted"):
        guard.remember_now("b" * 64, now + 600, now)
    guard.remember_now("c" * 64, now + 600, now)        # this insert purges "a"
    with engine.connect() as connection:
        left = set(connection.execute(select(REPLAY_TABLE.c.digest)).scalars())
    assert left == {"b" * 64, "c" * 64}
    engine.dispose()


def test_two_nodes_on_postgresql_agree_on_replays() -> None:
    with pg_schema() as url:
        node_a, node_b = create_engine(url), create_engine(url)
        try:
            a, b = ReplayGuard(node_a), ReplayGuard(node_b)
            a.ensure_schema()
            b.ensure_schema()
            now = time.time()
            a.remember_now("d" * 64, now + 300, now)
            with pytest.raises(Replay):
                b.remember_now("d" * 64, now + 300, now)
            b.remember_now("e" * 64, now + 300, now)
            with node_a.connect() as connection:
                assert connection.execute(select(func.count()).select_from(REPLAY_TABLE)).scalar() == 2
        finally:
            node_a.dispose()
            node_b.dispose()


async def test_chunked_signed_upload_is_read_whole_and_verified(
    gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, dev_pki: DevPki,
    tmp_path: Path,
) -> None:
    base = await gateway(secured_config(tmp_path, dev_pki, backend.url))
    signed = signed_now(dev_pki)

    async def chunks() -> Any:
        for start in range(0, len(signed), 700):  # no Content-Length: the relay streams what it cannot size
            yield signed[start:start + 700]

    async with http.post(f"{base}/soap", data=chunks(), headers={**soap11_headers(), **basic("juki", "pw")}) as resp:
        assert resp.status == 200, await resp.read()
    assert backend.seen[0].body == signed


async def test_oversized_message_for_verification_is_refused(
    gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, dev_pki: DevPki,
    tmp_path: Path,
) -> None:
    config = secured_config(tmp_path, dev_pki, backend.url)
    config["gateway"]["max_message_bytes"] = 4096
    base = await gateway(config)
    padded = ENVELOPE.replace("住民記録".encode(), b"x" * 5000)

    async def chunks() -> Any:
        yield padded

    async with http.post(f"{base}/soap", data=chunks(), headers={**soap11_headers(), **basic("juki", "pw")}) as resp:
        assert resp.status == 413 and fault_of(await resp.read())[2] == "MessageTooLarge"
    assert backend.seen == []


def test_wss_configuration(dev_pki: DevPki, tmp_path: Path) -> None:
    from gateway.errors import ConfigError
    from routing.config import parse_config
    config = parse_config({"gateway": {"wss": {"clock_skew": 60, "max_ttl": 600, "sign_ttl": 120}},
                           "endpoints": {"demo": {"url": "http://127.0.0.1:1/x", "wss": {"sign": {
                               "key": str(dev_pki.signing.key), "cert": str(dev_pki.signing.cert)}}}}})
    assert (config.gateway.wss.clock_skew, config.gateway.wss.max_ttl, config.gateway.wss.sign_ttl) == (60, 600, 120)
    sign = config.endpoints["demo"].outbound.wss_sign  # type: ignore[union-attr]
    assert sign is not None and sign.key == dev_pki.signing.key
    bad = {
        "does not belong to cert": {"key": str(dev_pki.signing2.key), "cert": str(dev_pki.signing.cert)},
        "no such file": {"key": str(tmp_path / "missing.pem"), "cert": str(dev_pki.signing.cert)},
        "unknown key 'algorithm'": {"key": str(dev_pki.signing.key), "cert": str(dev_pki.signing.cert),
                                    "algorithm": "rsa"},
    }
    for problem, sign_config in bad.items():
        with pytest.raises(ConfigError, match=problem):
            parse_config({"endpoints": {"demo": {"url": "http://127.0.0.1:1/x", "wss": {"sign": sign_config}}}})
    with pytest.raises(ConfigError, match="gateway.wss.max_ttl"):
        parse_config({"gateway": {"wss": {"max_ttl": 0}}})


# -- zeep (python-xmlsec) as the client's WS-Security stack ------------------------------------

def _timestamp(envelope: Any) -> None:
    """Add a wsu:Timestamp, which zeep's signer then signs together with the Body."""
    from zeep.wsse import utils
    now = dt.datetime.now(dt.timezone.utc)
    stamp = utils.WSU.Timestamp(utils.WSU.Created(now.strftime("%Y-%m-%dT%H:%M:%SZ")),
                                utils.WSU.Expires((now + dt.timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")))
    utils.get_security_header(envelope).append(stamp)


async def test_zeep_signed_requests_are_accepted(
    gateway: GatewayFactory, demo_url: str, dev_pki: DevPki, tmp_path: Path,
) -> None:
    import asyncio

    import requests
    import xmlsec
    import zeep
    from zeep.wsse.signature import BinarySignature

    class RequestSignature(BinarySignature):
        def apply(self, envelope: Any, headers: Any) -> Any:
            _timestamp(envelope)
            return super().apply(envelope, headers)

        def verify(self, envelope: Any) -> Any:
            return envelope  # the demo AP does not sign its answers

    base = await gateway(secured_config(tmp_path, dev_pki, demo_url.rsplit("/", 1)[0] + "/demo"))

    def call() -> list[str]:
        session = requests.Session()
        session.auth = ("juki", "pw")
        signature = RequestSignature(str(dev_pki.signing.key), str(dev_pki.signing.cert),
                                     signature_method=xmlsec.Transform.RSA_SHA256,  # type: ignore[attr-defined]
                                     digest_method=xmlsec.Transform.SHA256)  # type: ignore[attr-defined]
        client = zeep.Client(f"{demo_url}?wsdl", transport=zeep.Transport(session=session),
                             wsse=signature)
        service = client.create_service("{urn:bmrgw:demo:1}DemoSoap11", f"{base}/soap/demo")
        return [service.Echo(text=text).text for text in ("署名", "twice")]

    assert await asyncio.to_thread(call) == ["署名", "twice"]


async def test_concurrent_signatures_share_one_commit_and_replays_are_still_refused(tmp_path: Path) -> None:
    import asyncio

    from gateway.store import Store
    store = Store(f"sqlite:///{tmp_path}/group.db")
    guard = ReplayGuard(store.engine)
    guard.ensure_schema()
    guard.remember_now("f" * 64, time.time() + 600, time.time())
    now = dt.datetime.now(dt.timezone.utc)
    later = now + dt.timedelta(minutes=10)
    digests = [f"{i:064x}" for i in range(50)] + ["f" * 64, f"{7:064x}"]   # one old replay, one within the batch
    outcomes = await asyncio.gather(*(guard.remember(d, keep_until=later, now=now) for d in digests),
                                    return_exceptions=True)
    refused = [d for d, o in zip(digests, outcomes) if isinstance(o, Replay)]
    assert refused == ["f" * 64, f"{7:064x}"]
    assert all(o is None for d, o in zip(digests, outcomes) if d not in refused)
    with store.engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(REPLAY_TABLE)).scalar() == 51
    store.close()


async def test_other_handlers_verify_through_the_app_key(dev_pki: DevPki, tmp_path: Path) -> None:
    """JX and refdb handlers get the same check through ``app[SECURITY].verify_client``."""
    from aiohttp import web

    from gateway.errors import InvalidSignature, UnsupportedMediaType
    from gateway.keys import SECURITY
    from gateway.serve.app import make_app
    from routing.config import Client, parse_config

    config = parse_config(secured_config(tmp_path, dev_pki, "http://127.0.0.1:1/x"))
    app = make_app(config)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        security = app[SECURITY]
        client = config.clients["juki-app"]
        settings = config.gateway
        await security.verify_client(signed_now(dev_pki), content_type="text/xml", client=client, settings=settings)
        with pytest.raises(InvalidSignature):
            await security.verify_client(ENVELOPE, content_type="text/xml", client=client, settings=settings)
        with pytest.raises(UnsupportedMediaType, match="attachments"):
            await security.verify_client(ENVELOPE, content_type="multipart/related", client=client,
                                         settings=settings)
        await security.verify_client(ENVELOPE, content_type="text/xml", client=Client(name="open"),
                                     settings=settings)  # no wss.verify: nothing to check
    finally:
        await runner.cleanup()


async def test_replay_records_survive_a_restart_in_their_own_sqlite_file(
    gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, dev_pki: DevPki,
    tmp_path: Path,
) -> None:
    signed = signed_now(dev_pki)
    first = await gateway(secured_config(tmp_path, dev_pki, backend.url))
    assert (await post(http, first, signed))[0] == 200
    # Beside the store, not in it: the log's writer process holds the store's write lock.
    assert (tmp_path / "wss-replay.db").exists()
    second = await gateway(secured_config(tmp_path, dev_pki, backend.url))  # another gateway, same files
    status, answer = await post(http, second, signed)
    assert status == 400 and fault_of(answer)[2] == "Replay"


def test_postgresql_keeps_replay_records_in_the_shared_store() -> None:
    from gateway.security.message import replay_store
    with pg_schema() as url:
        engine = create_engine(url)
        try:
            assert replay_store(engine) is None
        finally:
            engine.dispose()


def test_sqlite_replay_records_are_synced_at_each_commit(tmp_path: Path) -> None:
    """An accepted signature must still be refused after a power cut: its replay record is fsynced
    with its commit (``synchronous=FULL``), not at the next WAL checkpoint as the store's NORMAL."""
    from gateway.security.message import replay_store
    engine = create_engine(f"sqlite:///{tmp_path / 'store.db'}")
    own = replay_store(engine)
    assert own is not None
    try:
        with own.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        own.engine.dispose()
        engine.dispose()
