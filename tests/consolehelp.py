"""What the console's tests share: a gateway config with an admin and a non-admin client, and a store
seeded with log records (one with a hostile message id), a JX document and a refdb push."""

from __future__ import annotations

import base64
import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gateway.cli import main
from gateway.console.traffic import Sampler
from gateway.console.traffic import ensure_table as ensure_traffic
from gateway.logs.records import LogRecord
from gateway.logs.tables import ensure_schema
from gateway.metrics import Metrics
from gateway.store import Store
from refdb.config import parse_refdb
from refdb.schema import ensure_schema as refdb_schema
from refdb.store import RefStore

from .refdb_support import RESIDENTS, person
from .test_auth import HASH, PASSWORD
from .test_journal import entry, write
from .test_refdb_store import push

ADMIN = ("ops", PASSWORD)
USER = ("juki", PASSWORD)
#: A message id a client chose to break out of HTML attributes and text alike.
HOSTILE_ID = "\"'><script>document.title='owned'</script><img src=x onerror=alert(1)>"
WIDE_AP = "札幌市役所住民課"
JX_ID = "jx-doc-1"
RECEIVER = "1310001"


def basic_header(login: tuple[str, str]) -> str:
    return "Basic " + base64.b64encode(f"{login[0]}:{login[1]}".encode()).decode()


def console_config(backend_url: str) -> dict[str, Any]:
    """Clients ``ops`` (admin) and ``juki-app`` (not), endpoints ``kaigo`` and ``zei``, a refdb dataset."""
    residents = copy.deepcopy(RESIDENTS)
    residents.update(owner="ops", readers=["ops"])
    return {
        "gateway": {"name": "gw-console"},
        "clients": {
            "ops": {"basic": {"user": ADMIN[0], "password_hash": HASH}, "admin": True, "allow": ["*"],
                    "jx": {"send": ["*"], "receive": ["*"]}},
            "juki-app": {"basic": {"user": USER[0], "password_hash": HASH}, "allow": ["kaigo"]},
        },
        "endpoints": {"kaigo": {"url": f"{backend_url}/kaigo"}, "zei": {"url": f"{backend_url}/zei"}},
        "refdb": {"datasets": {"residents": residents}},
    }


def seed(config: Path, db_url: str, tmp_path: Path) -> None:
    """Log records of the last hours, traffic counted by another node (``dc-east``: kaigo 2 ok and 1
    failed, zei 1 ok), a JX document waiting for 1310001, and 3 residents pushed."""
    now = datetime.now(UTC).replace(microsecond=0)
    store = Store(db_url)
    try:
        ensure_schema(store.engine)
        write(store.engine, "dc-east", _records(now))
        declared = parse_refdb({"datasets": {"residents": {**RESIDENTS, "owner": "ops", "readers": ["ops"]}}})
        refstore = RefStore(store.engine, refdb_schema(store.engine, declared))
        push(refstore, [person(1), person(2), person(3)])
        counters = Metrics()
        for destination, status in [("kaigo", "ok"), ("kaigo", "ok"), ("kaigo", "fault"), ("zei", "ok")]:
            counters.observe(destination, status, 0.01)
        ensure_traffic(store.engine)
        Sampler(store.engine, "dc-east", counters.registry).sample()
    finally:
        store.close()
    document = tmp_path / "notice.csv"
    document.write_text("a,b\n1,2\n", encoding="utf-8")
    assert main(["jx", "put", str(document), "--to", RECEIVER, "--message-id", JX_ID, "--config", str(config),
                 "--db", db_url]) == 0


def _records(now: datetime) -> list[LogRecord]:
    hour = timedelta(hours=1)
    return [
        entry(0, ts=now - 3 * hour, message_id="m-trail", from_ap="juki", to_ap="kaigo", client="juki-app"),
        entry(1, ts=now - 3 * hour, message_id="m-trail", direction="response", to_ap="kaigo", client="juki-app"),
        entry(2, ts=now - hour, message_id="m-fault", direction="response", to_ap="kaigo", status="fault",
              http_status=500, fault_code="Server", client="juki-app"),
        entry(3, ts=now - hour, message_id=HOSTILE_ID, from_ap=WIDE_AP, to_ap="zei",
              client="<b>evil</b>", endpoint="javascript:alert(3)"),
        entry(4, ts=now - hour, message_id=HOSTILE_ID, direction="response", to_ap="zei", client="<b>evil</b>"),
    ]
