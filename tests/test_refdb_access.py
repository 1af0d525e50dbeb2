"""Who may use /refdb: the owner pushes, readers (and the owner) query, others get Forbidden,
strangers get Unauthorized; the log names the client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from gateway.errors import ConfigError, RemoteFault
from gateway.keys import JOURNAL, STORE
from gateway.logs.tables import LogFilter, read
from gateway.security.passwords import hash_password
from gateway.serve.app import AppOptions, make_app
from refdb.client import RefdbClient
from routing.config import parse_config

from .certs import DevPki, dev_pki  # noqa: F401  (fixture)
from .conftest import start_app
from .refdb_support import person, refdb_section

T = TypeVar("T")
PASSWORD = "correct horse battery staple"
HASH = hash_password(PASSWORD)
CLIENTS = {
    "cityhall-a-app": {"basic": {"user": "cityhall", "password_hash": HASH}, "allow": []},
    "kaigo-app": {"basic": {"user": "kaigo", "password_hash": HASH}, "allow": ["*"]},
    "zei-app": {"basic": {"user": "zei", "password_hash": HASH}, "allow": ["*"]},
}


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[tuple[str, Any]]:
    config = {"gateway": {"db": f"sqlite:///{tmp_path}/gw.db"}, "clients": CLIENTS, "refdb": refdb_section()}
    app = make_app(parse_config(config, source=tmp_path / "endpoints.yaml"), AppOptions(watch_config=False))
    runner, base = await start_app(app)
    yield base, app
    await runner.cleanup()


async def as_user(base: str, user: str | None, fn: Callable[[RefdbClient], T]) -> T:
    def call() -> T:
        with RefdbClient(base, user=user, password=PASSWORD if user else None) as client:
            return fn(client)
    return await asyncio.to_thread(call)


async def refused(base: str, user: str | None, fn: Callable[[RefdbClient], Any]) -> RemoteFault:
    with pytest.raises(RemoteFault) as caught:
        await as_user(base, user, fn)
    return caught.value


async def test_owner_pushes_readers_query_others_are_forbidden(gateway: tuple[str, Any]) -> None:
    base, app = gateway
    pushed = await as_user(base, "cityhall", lambda c: c.push("residents", [person(1), person(2)], mode="full"))
    assert pushed.inserted == 2
    assert len((await as_user(base, "kaigo", lambda c: c.query("residents"))).records) == 2
    assert len((await as_user(base, "cityhall", lambda c: c.query("residents"))).records) == 2
    for user, attempt in (("kaigo", lambda c: c.push("residents", [person(3)])),
                          ("kaigo", lambda c: c.upsert("residents", [person(3)])),
                          ("kaigo", lambda c: c.delete("residents", [{"person_id": "P000001"}])),
                          ("zei", lambda c: c.query("residents")),
                          ("zei", lambda c: c.changes("residents", 0))):
        fault = await refused(base, user, attempt)
        assert (fault.remote_code, fault.status) == ("Forbidden", 403), user
    fault = await refused(base, None, lambda c: c.query("residents"))
    assert (fault.remote_code, fault.status) == ("Unauthorized", 401)
    assert [r["person_id"] for r in (await as_user(base, "kaigo", lambda c: c.query("residents"))).records] == \
        ["P000001", "P000002"]
    await app[JOURNAL].flush()
    records = list(read(app[STORE].engine, LogFilter(kind="refdb")))
    assert {(r.client, r.endpoint, r.status) for r in records} >= {
        ("cityhall-a-app", "refdb:full", "ok"), ("kaigo-app", "refdb:Query", "ok"),
        ("zei-app", "refdb:Query", "fault"), ("kaigo-app", "refdb:BeginPush", "fault")}


async def test_another_client_cannot_commit_or_abort_the_owners_push(gateway: tuple[str, Any]) -> None:
    base, _ = gateway
    begin = '<r:dataset>residents</r:dataset><r:mode>full</r:mode>'
    push_id = await as_user(base, "cityhall", lambda c: c.call("BeginPush", begin).findtext(
        "{urn:bmrgw:refdb:1}pushId"))
    for operation in ("Commit", "Abort", "Upsert"):
        fault = await refused(base, "kaigo", lambda c: c.call(operation, f"<r:pushId>{push_id}</r:pushId>"
                                                             "<r:records/>"))
        assert fault.remote_code == "Forbidden", operation
    result = await as_user(base, "cityhall", lambda c: c.call("Commit", f"<r:pushId>{push_id}</r:pushId>"))
    assert result.findtext("{urn:bmrgw:refdb:1}version") == "1"


def test_owners_and_readers_must_be_configured_clients() -> None:
    section = refdb_section()
    section["datasets"]["residents"]["readers"] = ["kaigo-app", "ghost-app"]
    with pytest.raises(ConfigError, match="refdb.datasets.residents.readers: no client named 'ghost-app'"):
        parse_config({"clients": CLIENTS, "refdb": section})
    section["datasets"]["residents"]["owner"] = "nobody"
    with pytest.raises(ConfigError, match="refdb.datasets.residents.owner: no client named 'nobody'"):
        parse_config({"clients": CLIENTS, "refdb": section})


async def test_a_client_that_must_sign_pushes_only_signed_requests(dev_pki: DevPki, tmp_path: Path) -> None:
    from gateway.security.wss import Signer, sign_envelope
    from refdb.client import _envelope

    clients = {**CLIENTS, "cityhall-a-app": {**CLIENTS["cityhall-a-app"], "wss": {"verify": str(dev_pki.signing.cert)}}}
    config = {"gateway": {"db": f"sqlite:///{tmp_path}/gw.db"}, "clients": clients, "refdb": refdb_section()}
    app = make_app(parse_config(config, source=tmp_path / "endpoints.yaml"), AppOptions(watch_config=False))
    runner, base = await start_app(app)
    try:
        fault = await refused(base, "cityhall", lambda c: c.upsert("residents", [person(1)]))
        assert fault.remote_code == "InvalidSignature"
        signer = Signer.load(dev_pki.signing.key.read_bytes(), dev_pki.signing.cert.read_bytes())
        body = _envelope("Upsert", '<r:dataset>residents</r:dataset><r:mode>full</r:mode><r:records><r:record>'
                         '<r:field name="person_id" value="P1"/></r:record></r:records>')
        signed = sign_envelope(body, signer, now=datetime.now(UTC), ttl=300, max_bytes=1 << 20)
        answer = await as_user(base, "cityhall", lambda c: c._post("Upsert", signed))
        assert answer.findtext("{urn:bmrgw:refdb:1}inserted") == "1"
        replayed = await refused(base, "cityhall", lambda c: c._post("Upsert", signed))
        assert replayed.remote_code == "Replay"
        # Readers without wss.verify query as before.
        assert [r["person_id"] for r in (await as_user(base, "kaigo", lambda c: c.query("residents"))).records] == ["P1"]
    finally:
        await runner.cleanup()
