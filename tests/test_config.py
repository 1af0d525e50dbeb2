"""endpoints.yaml validation and the BMR-GW route table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.errors import ConfigError, MalformedMessage, UnknownDestination
from routing.config import PeerEndpoint, UrlEndpoint, load_config, parse_config
from routing.table import RouteTable

REPO = Path(__file__).resolve().parents[1]

BASE: dict[str, Any] = {
    "gateway": {"name": "dc-east", "fallback_peer": "dc-west"},
    "endpoints": {
        "kaigo": {"url": "http://127.0.0.1:9001/kaigo", "timeout": 5},
        "juki-west": {"via": "dc-west"},
    },
    "peers": {"dc-west": {"url": "http://127.0.0.1:8081/soap/"}},
}


def test_sample_endpoints_yaml_is_valid() -> None:
    config = load_config(REPO / "endpoints.yaml")
    assert isinstance(config.endpoints["demo"], UrlEndpoint)
    assert config.gateway.listen.port == 8080
    assert config.resolve_path("var") == REPO / "var"


def test_parsed_objects_are_frozen_and_typed() -> None:
    config = parse_config(BASE)
    assert config.endpoints["kaigo"] == UrlEndpoint(name="kaigo", url="http://127.0.0.1:9001/kaigo", timeout=5.0)
    assert config.endpoints["juki-west"] == PeerEndpoint(name="juki-west", via="dc-west")
    with pytest.raises(AttributeError):
        config.gateway.name = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.endpoints["new"] = config.endpoints["kaigo"]  # type: ignore[index]


def test_db_override() -> None:
    assert parse_config(BASE, db="postgresql://127.0.0.1/test").gateway.db == "postgresql://127.0.0.1/test"


def _with(path: str, value: Any) -> dict[str, Any]:
    import copy
    data = copy.deepcopy(BASE)
    node = data
    keys = path.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    return data


@pytest.mark.parametrize(("path", "value", "message"), [
    ("endpoints.kaigo.url", "ftp://127.0.0.1/x", "endpoints.kaigo.url"),
    ("endpoints.kaigo.url", "not a url", "endpoints.kaigo.url"),
    ("endpoints.kaigo.timeout", 0, "endpoints.kaigo.timeout"),
    ("endpoints.kaigo.timeout", "30", "endpoints.kaigo.timeout"),
    ("endpoints.kaigo.colour", "red", "unknown key 'colour'"),
    ("endpoints.bad name", {"url": "http://127.0.0.1/"}, "not a valid name"),
    ("endpoints.both", {"url": "http://127.0.0.1/", "via": "dc-west"}, "exactly one of url or via"),
    ("endpoints.nothing", {}, "exactly one of url or via"),
    ("endpoints.lost", {"via": "dc-north"}, "no peer named 'dc-north'"),
    ("gateway.fallback_peer", "dc-south", "no peer named 'dc-south'"),
    ("gateway.max_message_bytes", -1, "gateway.max_message_bytes"),
    ("gateway.listen", {"port": 70000}, "gateway.listen.port"),
    ("gateway.routing_header", "Routing", "Clark notation"),
    ("gateway.tls", {"cert": "/nonexistent/c.pem", "key": "/nonexistent/k.pem"}, "gateway.tls.cert: no such file"),
    ("gateway.tls", {"cert": "/etc/hostname"}, "gateway.tls: needs key"),
    ("gateway.tls", {"cert": "/etc/hostname", "key": "/etc/hostname", "ca": "x"}, "unknown key 'ca'"),
    ("clients", {"app": {"allow": ["*"]}}, "clients.app: needs basic or cert_subject"),
    ("clients", {"app": {"basic": {"user": "u", "password": "pw"}}}, "plain passwords are not accepted"),
    ("clients", {"app": {"basic": {"user": "u", "password_hash": "md5:abc"}}}, "not a hash printed by"),
    ("clients", {"app": {"basic": {"user": "u:v", "password_hash": "$scrypt$x"}}}, "may not contain ':'"),
    ("clients", {"a": {"cert_subject": "CN=x,O=y"}, "b": {"cert_subject": "o=y, CN=x"}}, "same subject as clients.a"),
    ("clients", {"a": {"basic": {"user": "u", "password_hash": "$scrypt$x"}},
                 "b": {"basic": {"user": "u", "password_hash": "$scrypt$y"}}}, "is also the user of clients.a"),
    ("clients", {"a": {"cert_subject": "juki"}}, "is not a subject like"),
    ("clients", {"a": {"cert_subject": "CN=a", "jx": {"receive": [1310001]}}}, "write ids as quoted strings"),
    ("clients", {"a": {"cert_subject": "CN=a", "allow": ["bad name"]}}, "clients.a.allow"),
    ("clients", {"a": {"cert_subject": "CN=a", "wss": {"verify": "/nonexistent.pem"}}}, "clients.a.wss.verify: no such file"),
    ("endpoints.city", {"mailbox": 1310001}, "write the receiver id in quotes"),
    ("endpoints.city", {"mailbox": "1", "timeout": 3}, "a mailbox endpoint stores messages"),
    ("peers.dc-west.url", None, "peers.dc-west.url"),
])
def test_invalid_configs_name_the_problem(path: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_with(path, value))
    assert message in info.value.reason


def test_unreadable_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("endpoints: {kaigo: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)


def test_routes_local_via_peer_and_fallback() -> None:
    table = RouteTable(parse_config(BASE))
    local = table.resolve("kaigo")
    assert (local.url, local.timeout, local.peer) == ("http://127.0.0.1:9001/kaigo", 5.0, None)
    via = table.resolve("juki-west")
    assert (via.url, via.peer, via.endpoint) == ("http://127.0.0.1:8081/soap/juki-west", "dc-west", "dc-west")
    fallback = table.resolve("zei")
    assert (fallback.url, fallback.peer) == ("http://127.0.0.1:8081/soap/zei", "dc-west")


def test_unknown_without_fallback_and_fallback_that_already_passed() -> None:
    no_fallback = _with("gateway.fallback_peer", None)
    del no_fallback["gateway"]["fallback_peer"]
    with pytest.raises(UnknownDestination):
        RouteTable(parse_config(no_fallback)).resolve("zei")
    with pytest.raises(UnknownDestination, match="does not know it either"):
        RouteTable(parse_config(BASE)).resolve("zei", passed=["dc-west"])


@pytest.mark.parametrize("destination", ["..", ".", "", "a/b", "../x", "-a", "a" * 65, "a\\b"])
def test_a_destination_that_is_not_a_name_never_becomes_a_fallback_url(destination: str) -> None:
    with pytest.raises(MalformedMessage, match="not a valid name"):
        RouteTable(parse_config(BASE)).resolve(destination)


def test_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "sjis.yaml"
    path.write_bytes("endpoints: {介護: {url: 'http://127.0.0.1/'}}\n".encode("shift_jis"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


@pytest.mark.parametrize("empty", [[], "", 0])
def test_wrong_type_for_a_section_is_not_taken_as_empty(empty: Any) -> None:
    with pytest.raises(ConfigError, match="endpoints: must be a mapping"):
        parse_config({"endpoints": empty})


def test_yaml_errors_are_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("endpoints:\n  kaigo: [\n")
    with pytest.raises(ConfigError) as info:
        load_config(broken)
    assert "\n" not in info.value.reason
