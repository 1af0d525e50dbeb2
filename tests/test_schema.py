"""The JSON Schema of endpoints.yaml and the README's key reference cannot drift from the parser."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from ruamel.yaml import YAML

from gateway.errors import ConfigError
from gateway.security.pki import Issued, load_ca, make_set
from routing import fields
from routing.config import load_config
from routing.schema import endpoints_schema, reference_markdown

from .conftest import BMRGW, write_yaml

ROOT = Path(__file__).resolve().parent.parent


def load_issued(folder: Path, name: str) -> Issued:
    ca = load_ca(folder)
    return ca if name == "ca" else Issued(cert=folder / f"{name}.pem", key=folder / f"{name}-key.pem",
                                          subject=f"CN={name}", not_after=ca.not_after)


SHIPPED = ROOT / "schemas" / "endpoints.schema.json"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Certificates, keys and a password file for :func:`maximal`, made once (RSA key generation is slow)."""
    tmp_path = tmp_path_factory.mktemp("schema")
    make_set(tmp_path / "pki", servers=("server",), clients=("client",), signers=("sign",))
    (tmp_path / "pw").write_text("secret\n")
    (tmp_path / "pw").chmod(0o600)
    for name in ("log.key", "master.key"):
        subprocess.run([*BMRGW, "logs" if name == "log.key" else "keys",
                        "keygen" if name == "log.key" else "init", str(tmp_path / name)], check=True,
                       capture_output=True)
    return tmp_path


def maximal(tmp_path: Path) -> dict[str, Any]:
    """A config that reaches every section the parser reads (each of its ``known`` checks)."""
    pki = {name: load_issued(tmp_path / "pki", name) for name in ("ca", "server", "client", "sign")}
    upstream = {"ca": str(pki["ca"].cert), "cert": str(pki["client"].cert), "key": str(pki["client"].key),
                "basic": {"user": "gw", "password_file": str(tmp_path / "pw")}}
    return {
        "gateway": {
            "name": "gw-max", "listen": {"host": "127.0.0.1", "port": 8080},
            "db": f"sqlite:///{tmp_path}/gw.db", "data_dir": str(tmp_path / "var"),
            "tls": {"cert": str(pki["server"].cert), "key": str(pki["server"].key),
                    "client_ca": str(pki["ca"].cert)},
            "ntp": {"servers": ["127.0.0.1:12300"], "interval": 64, "max_step": 1},
            "logs": {"enabled": True, "retention_days": 365}, "log_key": str(tmp_path / "log.key"),
            "wss": {"clock_skew": 300}, "jx": {"lease_seconds": 60, "max_pending_documents": 10,
                                                        "retention": {"confirmed": "30d", "dead": "90d",
                                                                      "every": "1h", "batch": 100}},
            "limits": {"max_connections": 100, "client_rate": 5, "client_burst": 10},
            "breaker": {"failures": 3}, "encryption": {"master_key": str(tmp_path / "master.key")},
            "access_log": "access.log", "fallback_peer": "dc-west",
        },
        "clients": {"app": {"basic": {"user": "app", "password_hash": "$scrypt$ln=4,r=8,p=1$c2FsdA$aGFzaA"},
                            "cert_subject": "CN=client", "allow": ["kaigo"], "senders": "*",
                            "jx": {"receive": ["131"], "send": ["132"]},
                            "wss": {"verify": str(pki["sign"].cert)}}},
        "endpoints": {"kaigo": {"url": "https://127.0.0.1:9443/kaigo", "timeout": 10, **upstream,
                                "wss": {"sign": {"key": str(pki["sign"].key), "cert": str(pki["sign"].cert)}},
                                "max_concurrent": 5, "queue_timeout": 1},
                      "failover": {"urls": ["http://127.0.0.1:9001/a", "http://127.0.0.1:9002/a"],
                                   "forward_credentials": True,  # issue 23: the HTTP API relay's keys
                                   "charset": {"encoding": "cp932", "unmappable": "substitute",
                                               "gaiji": str(ROOT / "tests/data/charset/gaiji-cp932.csv")}},
                      "west": {"via": "dc-west"}, "city": {"mailbox": "131"},
                      "off": {"url": "http://127.0.0.1:9003/x", "disabled": True}},
        "peers": {"dc-west": {"url": "https://127.0.0.1:8443/soap", **upstream, "max_concurrent": 3}},
        "refdb": {"datasets": {"residents": {"owner": "app", "readers": ["app"], "key": ["person_id"],
                                             "columns": {"person_id": "string", "fee": "decimal(10,2)"},
                                             "sql_readers": ["kaigo_reader"]}},
                  "max_concurrent": 4},
    }


def _schema_keys(schema: dict[str, Any], path: str) -> set[str]:
    """The keys the schema allows at a parser path (``endpoints.kaigo.basic`` → endpoints.NAME.basic)."""
    node: dict[str, Any] = schema
    words = [] if path == "(top level)" else path.split(".")
    i = 0
    while i < len(words):
        node = _object(node)
        if words[i] in node.get("properties", {}):
            node = node["properties"][words[i]]
        else:
            node = node["additionalProperties"]  # a name you choose (endpoints.NAME)
        i += 1
    return set(_object(node)["properties"])


def _object(node: dict[str, Any]) -> dict[str, Any]:
    if node.get("type") == "object":
        return node
    return next(option for option in node["anyOf"] if option.get("type") == "object")


def test_the_schema_allows_exactly_the_keys_the_parser_accepts(files: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, set[str]] = {}
    real = fields.known

    def recording(m: Any, path: str, allowed: set[str]) -> None:
        seen[path] = set(allowed)
        real(m, path, allowed)

    monkeypatch.setattr(fields, "known", recording)
    path = tmp_path / "endpoints.yaml"
    write_yaml(path, maximal(files))
    load_config(path)
    schema = endpoints_schema()
    expected_paths = {"(top level)", "gateway", "gateway.listen", "gateway.tls", "gateway.ntp", "gateway.jx",
                      "gateway.jx.retention",
                      "gateway.limits", "gateway.encryption", "clients.app", "clients.app.jx", "endpoints.kaigo",
                      "endpoints.kaigo.basic", "endpoints.kaigo.wss", "endpoints.kaigo.wss.sign", "peers.dc-west",
                      "refdb", "refdb.datasets.residents"}
    assert expected_paths <= set(seen), "the config reaches every section"
    for where, allowed in seen.items():
        keys = _schema_keys(schema, where)
        if where.startswith("endpoints.") and where.count(".") == 1:
            keys.discard("disabled")  # taken off before the check (an endpoint's service switch)
        assert keys == allowed, f"{where}: schema {sorted(keys ^ allowed)} differ from the parser"


def test_every_config_the_project_ships_validates(files: Path, tmp_path: Path) -> None:
    validator = jsonschema.Draft202012Validator(endpoints_schema())
    yaml = YAML(typ="safe")
    shipped = [yaml.load((ROOT / "endpoints.yaml").read_text())]
    assert subprocess.run([*BMRGW, "init", "--dir", str(tmp_path / "etc")], capture_output=True).returncode == 0
    shipped.append(yaml.load((tmp_path / "etc" / "endpoints.yaml").read_text()))
    shipped.append(maximal(files))
    for config in shipped:
        assert list(validator.iter_errors(config)) == []


@pytest.mark.parametrize("edit, where", [
    (lambda c: c["gateway"].update(lisen={"port": 1}), "lisen"),
    (lambda c: c["gateway"].update(max_message_bytes="big"), "max_message_bytes"),
    (lambda c: c["endpoints"].update(both={"url": "http://127.0.0.1:1/x", "via": "dc-west"}), "both"),
    (lambda c: c["endpoints"].update(none={"timeout": 5}), "none"),
    (lambda c: c["clients"]["app"]["jx"].update(recieve=["1"]), "recieve"),
    (lambda c: c["refdb"]["datasets"]["residents"]["columns"].update(age="number"), "age"),
])
def test_what_the_parser_refuses_the_schema_refuses_too(files: Path, tmp_path: Path, edit: Any, where: str) -> None:
    config = maximal(files)
    edit(config)
    errors = list(jsonschema.Draft202012Validator(endpoints_schema()).iter_errors(config))
    assert errors, "the editor flags it"
    path = tmp_path / "bad.yaml"
    write_yaml(path, config)
    with pytest.raises(ConfigError, match=re.escape(where) if where not in ("none",) else "exactly one of"):
        load_config(path)


def test_the_shipped_schema_file_is_the_generated_one() -> None:
    assert json.loads(SHIPPED.read_text()) == endpoints_schema(), (
        "regenerate it: .venv/bin/bmrgw endpoints schema > schemas/endpoints.schema.json")
    printed = subprocess.run([*BMRGW, "endpoints", "schema"], capture_output=True, text=True, check=True)
    assert json.loads(printed.stdout) == endpoints_schema()


def test_the_readme_reference_table_is_the_generated_one() -> None:
    text = (ROOT / "README.md").read_text()
    found = re.search(r"<!-- config-reference -->\n(.*?)<!-- /config-reference -->", text, re.S)
    assert found is not None, "README has the generated reference table"
    assert found.group(1) == reference_markdown(), "regenerate it: .venv/bin/bmrgw endpoints schema --markdown"
    for key in ("gateway.jx.max_pending_documents", "endpoints.NAME.urls", "clients.NAME.jx.receive",
                "refdb.datasets.NAME.sql_readers", "gateway.access_log"):
        assert f"| `{key}` |" in found.group(1)


def test_the_sample_config_points_editors_at_the_schema() -> None:
    first = (ROOT / "endpoints.yaml").read_text().splitlines()[0]
    assert first == "# yaml-language-server: $schema=schemas/endpoints.schema.json"
