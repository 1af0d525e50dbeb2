"""The operator's console over plain HTTP (issue 22, item 1): every page for an admin, refusals for
everyone else, CSRF and origin checks on every state change, escaping of client-chosen names, and the
state changes themselves — each one visible in the send/receive log."""

from __future__ import annotations

import asyncio
import re
import ssl
from urllib.parse import quote
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import create_engine

from gateway.console.traffic import Sampler, Traffic, traffic
from gateway.console.traffic import ensure_table as ensure_traffic
from gateway.console.markup import el, local_time
from gateway.logs.tables import LogFilter
from gateway.metrics import Metrics

from .certs import DevPki, dev_pki  # noqa: F401  (the session fixture)
from .conftest import GatewayFactory, RecordingBackend, message, soap11_headers
from .consolehelp import ADMIN, HOSTILE_ID, JX_ID, RECEIVER, USER, WIDE_AP, basic_header, console_config, seed
from .pg import pg_schema
from .records import records

PAGES = ["/console", "/console/endpoints", "/console/log", "/console/jx", "/console/refdb", "/console/integrity",
         "/console/log?trail=m-trail", f"/console/jx/purge?message_id={JX_ID}"]
ACTIONS = [("/console/endpoints/disable", {"name": "zei"}), ("/console/endpoints/enable", {"name": "zei"}),
           ("/console/endpoints/reset", {"name": "kaigo"}), ("/console/jx/confirm", {"message_id": JX_ID}),
           ("/console/jx/purge", {"message_id": JX_ID, "confirm": "yes"}), ("/console/integrity/verify", {})]


@dataclass
class Console:
    base: str
    config: Path
    db: Path
    http: aiohttp.ClientSession

    async def get(self, path: str, login: tuple[str, str] | None = ADMIN,
                  headers: dict[str, str] | None = None) -> tuple[int, str]:
        sent = {"Authorization": basic_header(login)} if login else {}
        async with self.http.get(self.base + path, headers={**sent, **(headers or {})}, allow_redirects=False) as resp:
            return resp.status, await resp.text()

    async def token(self) -> str:
        """Open a page (which starts the session) and read the form token from its meta tag."""
        status, body = await self.get("/console")
        assert status == 200, body
        found = re.search(r'<meta name="csrf-token" content="([^"]+)">', body)
        assert found is not None
        return found[1]

    async def post(self, path: str, fields: dict[str, str], *, token: str | None, login: tuple[str, str] = ADMIN,
                   headers: dict[str, str] | None = None) -> tuple[int, str, str]:
        form = dict(fields) if token is None else {**fields, "csrf_token": token}
        sent = {"Authorization": basic_header(login), "Origin": self.base, **(headers or {})}
        async with self.http.post(self.base + path, data=form, headers=sent, allow_redirects=False) as resp:
            return resp.status, resp.headers.get("Location", ""), await resp.text()


async def logged(db: Path, where: LogFilter, count: int, timeout: float = 10.0) -> list[Any]:
    """The records matching ``where`` once there are ``count`` (the log writer commits in batches)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = await asyncio.to_thread(records, db, where)
        if len(found) >= count or asyncio.get_running_loop().time() > deadline:
            return found
        await asyncio.sleep(0.1)


@pytest.fixture
async def console(gateway: GatewayFactory, backend: RecordingBackend, tmp_path: Path) -> AsyncIterator[Console]:
    db = tmp_path / "console.db"
    config = console_config(backend.url)
    config["gateway"]["db"] = f"sqlite:///{db}"
    config["gateway"]["data_dir"] = str(tmp_path / "var")
    base = await gateway(config, watch=True)
    source = tmp_path / "endpoints-0.yaml"
    await asyncio.to_thread(seed, source, f"sqlite:///{db}", tmp_path)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        yield Console(base, source, db, http)


class _Parsed(HTMLParser):
    """Everything the browser would run or load: script elements, event handler attributes, URLs."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts = 0
        self.handlers: list[str] = []
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.scripts += tag == "script"
        for name, value in attrs:
            if name.startswith("on"):
                self.handlers.append(name)
            if name in ("href", "src", "action") and value:
                self.urls.append(value)


def parsed(body: str) -> _Parsed:
    parser = _Parsed()
    parser.feed(body)
    return parser


async def test_every_page_answers_an_admin_in_html_without_scripts(console: Console) -> None:
    for path in PAGES:
        status, body = await console.get(path)
        assert status == 200, (path, body)
        page = parsed(body)
        assert page.scripts == 0 and page.handlers == [], path
        assert all(u.startswith(("/console", "http://www.w3.org")) for u in page.urls), (path, page.urls)
        assert "<nav>" in body and 'name="csrf-token"' in body


async def test_pages_show_what_the_store_holds(console: Console) -> None:
    _, overview = await console.get("/console")
    assert "gw-console" in overview and "<svg" in overview and ">kaigo</a>" in overview
    _, endpoints = await console.get("/console/endpoints")
    assert ">kaigo</a>" in endpoints and "/kaigo" in endpoints and 'data-state="enabled"' in endpoints
    _, log = await console.get("/console/log?status=fault")
    assert "m-fault" in log and "m-trail" not in log
    _, by_client = await console.get("/console/log?client=juki-app&ap=kaigo")
    assert "m-trail" in by_client and "m-fault" in by_client and WIDE_AP not in by_client
    _, trail = await console.get("/console/log?trail=m-trail")
    assert trail.count("m-trail") >= 2 and "→" in trail and "←" in trail
    _, jx = await console.get(f"/console/jx?receiver={RECEIVER}&state=ready")
    assert JX_ID in jx and "/console/jx/confirm" in jx
    _, refdb = await console.get("/console/refdb")
    assert "residents" in refdb and re.search(r"<td>3</td>", refdb)


async def test_times_are_local_with_the_utc_offset(console: Console, monkeypatch: pytest.MonkeyPatch) -> None:
    import time
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        _, body = await console.get("/console/log?message_id=m-fault")
    finally:
        monkeypatch.undo()
        time.tzset()
    assert "UTC+09:00" in body and re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \+09:00", body)


async def test_hostile_names_are_shown_as_text(console: Console) -> None:
    """A message id, client and endpoint a caller chose cannot become markup on any page that shows them."""
    for path in ["/console/log", "/console/log?kind=relay", f"/console/log?trail={quote(HOSTILE_ID, safe='')}",
                 f"/console/log?message_id={quote(HOSTILE_ID, safe='')}"]:
        status, body = await console.get(path)
        assert status == 200
        page = parsed(body)
        assert page.scripts == 0 and page.handlers == [], (path, page.handlers)
        assert "<script>" not in body and "<b>evil</b>" not in body and 'href="javascript:' not in body
        assert "&lt;script&gt;" in body and "&lt;b&gt;evil&lt;/b&gt;" in body


async def test_no_credentials_401_with_a_challenge(console: Console) -> None:
    for path in PAGES:
        async with console.http.get(console.base + path, allow_redirects=False) as resp:
            assert resp.status == 401, path
            assert resp.headers["WWW-Authenticate"].startswith("Basic ")
            assert "csrf" not in await resp.text()
    async with console.http.post(console.base + "/console/endpoints/disable", data={"name": "zei"}) as resp:
        assert resp.status == 401
    await console.get("/console", login=(ADMIN[0], "wrong"))  # a failed login is logged, a challenge is not
    refused = await logged(console.db, LogFilter(kind="console", status="fault"), 1)
    await asyncio.sleep(0.5)  # the writer's next batch would hold any other
    assert [r.client for r in await logged(console.db, LogFilter(kind="console"), 1)] == ["user:ops"] == [
        r.client for r in refused]


async def test_a_client_that_is_not_an_admin_gets_403(console: Console) -> None:
    for path in PAGES:
        status, body = await console.get(path, login=USER)
        assert status == 403 and "not an admin" in body, path
    status, _location, _ = await console.post("/console/endpoints/disable", {"name": "zei"}, token="x", login=USER)
    assert status == 403
    refused = await logged(console.db, LogFilter(kind="console", status="fault"), len(PAGES) + 1)
    assert len(refused) == len(PAGES) + 1 and {r.client for r in refused} == {"juki-app"} and {r.http_status for r in refused} == {403}


async def test_a_wrong_password_is_401_and_logged(console: Console) -> None:
    status, _ = await console.get("/console", login=(ADMIN[0], "wrong"))
    assert status == 401
    refused = await logged(console.db, LogFilter(kind="console", status="fault"), 1)
    assert [(r.client, r.http_status, r.fault_code) for r in refused] == [("user:ops", 401, "Unauthorized")]


async def test_without_an_admin_client_the_console_is_closed(gateway: GatewayFactory, backend: RecordingBackend,
                                                             http: aiohttp.ClientSession) -> None:
    config = console_config(backend.url)
    config["clients"]["ops"]["admin"] = False
    config.pop("refdb")
    base = await gateway(config)
    async with http.get(f"{base}/console", headers={"Authorization": basic_header(ADMIN)}) as resp:
        assert resp.status == 403 and "console is closed" in await resp.text()


@pytest.mark.parametrize(("path", "fields"), ACTIONS)
async def test_posts_without_or_with_a_wrong_token_are_refused(console: Console, path: str,
                                                               fields: dict[str, str]) -> None:
    good = await console.token()
    for token in (None, "", good[:-2] + "xx", good.upper()):
        status, _, body = await console.post(path, fields, token=token)
        assert status == 403 and "CSRF" in body, (path, token)
    status, _, body = await console.post(path, fields, token=good, headers={"Origin": "http://evil.example"})
    assert status == 403 and "another origin" in body
    status, _, body = await console.post(path, fields, token=good, headers={"Sec-Fetch-Site": "cross-site"})
    assert status == 403 and "cross-site" in body
    assert 'data-state="enabled"' in (await console.get("/console/endpoints"))[1]  # nothing changed


async def test_a_token_of_another_session_is_refused(console: Console) -> None:
    stolen = await console.token()
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as other:
        second = Console(console.base, console.config, console.db, other)
        await second.token()  # its own session
        status, _, _ = await second.post("/console/endpoints/disable", {"name": "zei"}, token=stolen)
    assert status == 403


async def test_the_session_cookie_is_strict_and_script_proof(console: Console) -> None:
    async with console.http.get(console.base + "/console", headers={"Authorization": basic_header(ADMIN)}) as resp:
        cookie = resp.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/console" in cookie
        assert "script-src" not in resp.headers["Content-Security-Policy"]  # default-src 'none': no script
        assert resp.headers["X-Frame-Options"] == "DENY"


async def wait_for(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.2)


async def test_disable_and_enable_an_endpoint_and_see_it_in_the_log(console: Console) -> None:
    token = await console.token()
    status, location, _ = await console.post("/console/endpoints/disable", {"name": "zei"}, token=token)
    assert status == 303 and location.startswith("/console/endpoints?done=disable")
    assert "disabled: true" in console.config.read_text()

    async def shown_disabled() -> bool:
        body = (await console.get("/console/endpoints"))[1]
        return 'data-state="disabled"' in body

    await wait_for(shown_disabled)  # the file watcher applied it
    status, _, _ = await console.post("/console/endpoints/enable", {"name": "zei"}, token=token)
    assert status == 303 and "disabled" not in console.config.read_text()
    done = await logged(console.db, LogFilter(kind="console", status="ok"), 2)
    assert [(r.endpoint, r.to_ap, r.client) for r in done] == [
        ("POST /console disable", "zei", "ops"), ("POST /console enable", "zei", "ops")]
    _, log = await console.get("/console/log?kind=console")
    assert "POST /console disable" in log and "zei" in log


async def test_reset_asks_every_process_through_the_store(console: Console) -> None:
    status, _, _ = await console.post("/console/endpoints/reset", {"name": "kaigo"}, token=await console.token())
    assert status == 303
    engine = create_engine(f"sqlite:///{console.db}")
    try:
        with engine.connect() as c:
            assert c.exec_driver_sql("SELECT name FROM circuit_reset").scalars().all() == ["kaigo"]
    finally:
        engine.dispose()


async def test_unknown_endpoint_is_a_404_and_logged_as_a_fault(console: Console) -> None:
    status, _, body = await console.post("/console/endpoints/disable", {"name": "<nope>"}, token=await console.token())
    assert status == 404 and "&lt;nope&gt;" in body
    failed = await logged(console.db, LogFilter(kind="console", status="fault"), 1)
    assert [(r.to_ap, r.fault_code) for r in failed] == [("<nope>", "UnknownDestination")]


async def test_jx_force_confirm_then_purge_after_asking(console: Console) -> None:
    token = await console.token()
    status, _, _ = await console.post("/console/jx/confirm", {"message_id": JX_ID}, token=token)
    assert status == 303
    assert JX_ID in (await console.get("/console/jx?state=confirmed"))[1]
    ask = (await console.get(f"/console/jx/purge?message_id={JX_ID}"))[1]
    assert 'name="confirm" value="yes"' in ask
    status, _, _ = await console.post("/console/jx/purge", {"message_id": JX_ID}, token=token)  # not confirmed
    assert status == 400
    status, _, _ = await console.post("/console/jx/purge", {"message_id": JX_ID, "confirm": "yes"}, token=token)
    assert status == 303
    assert JX_ID not in (await console.get("/console/jx"))[1]
    done = await logged(console.db, LogFilter(kind="console", status="ok"), 2)
    assert [(r.endpoint, r.message_id) for r in done] == [("POST /console confirm", JX_ID),
                                                          ("POST /console purge", JX_ID)]


async def test_log_verification_runs_and_shows_its_result(console: Console) -> None:
    status, _, _ = await console.post("/console/integrity/verify", {}, token=await console.token())
    assert status == 303

    async def finished() -> bool:
        return 'data-verdict="running"' not in (await console.get("/console/integrity"))[1]

    await wait_for(finished, timeout=30)
    body = (await console.get("/console/integrity"))[1]
    assert 'data-verdict="ok"' in body and "chain dc-east" in body and "no tampering found" in body
    engine = create_engine(f"sqlite:///{console.db}")
    try:  # tamper with one record: the next run says so
        with engine.begin() as c:
            c.exec_driver_sql("UPDATE exchange_log SET to_ap = 'other' WHERE message_id = 'm-fault'")
    finally:
        engine.dispose()
    await console.post("/console/integrity/verify", {}, token=await console.token())
    await wait_for(finished, timeout=30)
    body = (await console.get("/console/integrity"))[1]
    assert 'data-verdict="failed"' in body and "TAMPERED" in body


async def test_japanese_labels_by_accept_language_and_the_toggle(console: Console) -> None:
    _, body = await console.get("/console", headers={"Accept-Language": "ja-JP,ja;q=0.9,en;q=0.5"})
    assert '<html lang="ja">' in body and "送受信ログ" in body
    _, body = await console.get("/console?lang=en", headers={"Accept-Language": "ja"})
    assert '<html lang="en">' in body and "Send/receive log" in body
    _, body = await console.get("/console/log", headers={"Accept-Language": "ja"})
    assert '<html lang="en">' in body  # the toggle's cookie wins


# -- pure parts ----------------------------------------------------------------------


def test_markup_escapes_text_and_attributes() -> None:
    shown = el("a", {"href": '/x?a="><script>', "title": "'"}, "<img src=x onerror=alert(1)>")
    assert shown == ('<a href="/x?a=&quot;&gt;&lt;script&gt;" title="&#x27;">'
                     "&lt;img src=x onerror=alert(1)&gt;</a>")


def test_local_time_shows_the_offset(monkeypatch: pytest.MonkeyPatch) -> None:
    import time
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        assert local_time(datetime(2026, 4, 1, 0, 30, 5, tzinfo=UTC)) == "2026-04-01 09:30:05 +09:00"
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_traffic_sums_every_nodes_counts_per_hour(kind: str, tmp_path: Path) -> None:
    """Two nodes' samplers add what their counters grew by; the chart sums them per destination and hour."""
    now = datetime(2026, 4, 1, 12, 40, tzinfo=UTC)
    if kind == "postgresql":
        with pg_schema() as url:
            found = _sampled(url, now)
    else:
        found = _sampled(f"sqlite:///{tmp_path}/t.db", now)
    kaigo, zei = found.by_endpoint["kaigo"], found.by_endpoint["zei"]
    assert len(kaigo) == 24 and kaigo[-1] == (3, 1) and kaigo[-3] == (1, 0) and sum(map(sum, kaigo)) == 5
    assert zei[-1] == (0, 1) and set(found.by_endpoint) == {"kaigo", "zei"}  # 30 h ago is outside


def _sampled(url: str, now: datetime) -> Traffic:
    engine = create_engine(url)
    try:
        ensure_traffic(engine)
        east, west = Metrics(), Metrics()
        samplers = [Sampler(engine, "east", east.registry), Sampler(engine, "west", west.registry)]
        for hours_ago in (30, 2):
            east.observe("kaigo", "ok", 0.01)
            samplers[0].sample((now - timedelta(hours=hours_ago)).timestamp())
        east.observe("kaigo", "ok", 0.01)
        east.observe("kaigo", "fault", 0.01)
        samplers[0].sample(now.timestamp())
        samplers[0].sample(now.timestamp())  # nothing new: nothing added
        west.observe("kaigo", "ok", 0.01)
        west.observe("kaigo", "ok", 0.01)
        west.observe("zei", "error", 0.01)
        samplers[1].sample(now.timestamp())
        return traffic(engine, 24, now=now)
    finally:
        engine.dispose()


async def test_relayed_requests_show_in_the_traffic_chart(gateway: GatewayFactory, backend: RecordingBackend,
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gateway.console.traffic.SAMPLE_SECONDS", 0.2)
    config = console_config(backend.url)
    config["gateway"].update(db=f"sqlite:///{tmp_path}/relay.db", data_dir=str(tmp_path / "var"))
    base = await gateway(config)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        headers = {**soap11_headers(), "Authorization": basic_header(ADMIN)}
        for _ in range(3):
            async with http.post(f"{base}/soap/kaigo", data=message("valid/soap11-no-header.xml"), headers=headers) as resp:
                assert resp.status == 200, await resp.text()
        view = Console(base, tmp_path / "endpoints-0.yaml", tmp_path / "relay.db", http)

        async def counted() -> bool:
            body = (await view.get("/console"))[1]
            return 'aria-label="kaigo: 3 ok, 0 failed"' in body

        await wait_for(counted)


async def test_every_page_on_postgresql(gateway: GatewayFactory, backend: RecordingBackend, tmp_path: Path) -> None:
    """The console's own queries (search, trail, traffic, JX listing, refdb rows) on the real PostgreSQL."""
    with pg_schema() as url:
        config = console_config(backend.url)
        config["gateway"].update(db=url, data_dir=str(tmp_path / "var"))
        base = await gateway(config)
        await asyncio.to_thread(seed, tmp_path / "endpoints-0.yaml", url, tmp_path)
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            pg = Console(base, tmp_path / "endpoints-0.yaml", tmp_path / "unused.db", http)
            for path in PAGES:
                status, body = await pg.get(path)
                assert status == 200, (path, body)
            assert "<svg" in (await pg.get("/console"))[1]
            assert "m-fault" in (await pg.get("/console/log?client=juki-app&status=fault"))[1]
            assert (await pg.get("/console/log?trail=m-trail"))[1].count("m-trail") >= 2
            assert JX_ID in (await pg.get(f"/console/jx?receiver={RECEIVER}&since=1d"))[1]
            assert re.search(r"<td>3</td>", (await pg.get("/console/refdb"))[1])


def test_admin_is_true_or_false() -> None:
    from gateway.errors import ConfigError
    from routing.config import parse_config

    config = console_config("http://127.0.0.1:9")
    config.pop("refdb")
    assert parse_config(config).clients["ops"].admin and not parse_config(config).clients["juki-app"].admin
    config["clients"]["ops"]["admin"] = "yes"
    with pytest.raises(ConfigError, match=r"clients\.ops\.admin: must be true or false"):
        parse_config(config)


async def test_a_failing_store_is_a_page_that_says_so(console: Console) -> None:
    engine = create_engine(f"sqlite:///{console.db}")
    try:
        with engine.begin() as c:
            c.exec_driver_sql("DROP TABLE console_verification")
    finally:
        engine.dispose()
    status, body = await console.get("/console/integrity")
    assert status == 503 and "console_verification" in body and "<nav>" in body


async def test_a_form_from_one_process_is_taken_by_another_on_the_same_store(
        gateway: GatewayFactory, backend: RecordingBackend, tmp_path: Path) -> None:
    """With --workers N the page and its POST may meet different processes: the CSRF secret is the store's."""
    db = f"sqlite:///{tmp_path}/shared.db"
    bases = []
    for node in ("w1", "w2"):
        config = console_config(backend.url)
        config["gateway"].update(db=db, data_dir=str(tmp_path / "var"), name=f"gw-{node}")
        bases.append(await gateway(config))
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        first = Console(bases[0], tmp_path / "endpoints-0.yaml", tmp_path / "shared.db", http)
        token = await first.token()  # the session cookie is the host's: the browser sends it to both ports
        second = Console(bases[1], tmp_path / "endpoints-1.yaml", tmp_path / "shared.db", http)
        status, location, body = await second.post("/console/endpoints/reset", {"name": "kaigo"}, token=token)
    assert status == 303 and location.startswith("/console/endpoints?done=reset"), body


async def test_an_admin_identified_by_its_client_certificate(gateway: GatewayFactory, backend: RecordingBackend,
                                                             tmp_path: Path, dev_pki: DevPki) -> None:
    """Mutual TLS: an admin client with only ``cert_subject`` opens the console and changes state; a client
    certificate of a client that is not an admin gets 403."""
    config = console_config(backend.url)
    config["gateway"].update(db=f"sqlite:///{tmp_path}/tls.db", data_dir=str(tmp_path / "var"),
                             tls={"cert": str(dev_pki.server.cert), "key": str(dev_pki.server.key),
                                  "client_ca": str(dev_pki.ca.cert)})
    config["clients"]["ops"] = {"cert_subject": dev_pki.client.subject, "admin": True}
    base = await gateway(config)
    context = ssl.create_default_context(cafile=str(dev_pki.ca.cert))
    context.load_cert_chain(dev_pki.client.cert, dev_pki.client.key)
    connector = aiohttp.TCPConnector(ssl=context)
    async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(f"{base}/console/endpoints") as resp:
            body = await resp.text()
            assert resp.status == 200 and "Secure" in resp.headers["Set-Cookie"], body
        token = re.search(r'<meta name="csrf-token" content="([^"]+)">', body)
        assert token is not None
        async with http.post(f"{base}/console/endpoints/reset", data={"name": "kaigo", "csrf_token": token[1]},
                             headers={"Origin": base}, allow_redirects=False) as resp:
            assert resp.status == 303
    config["clients"]["ops"]["admin"] = False
    config["clients"]["juki-app"]["admin"] = True  # an admin exists, but not this certificate's client
    base = await gateway(config)
    connector = aiohttp.TCPConnector(ssl=context)
    async with aiohttp.ClientSession(connector=connector) as http, http.get(f"{base}/console") as resp:
        assert resp.status == 403 and "not an admin" in await resp.text()
