"""``bmrgw check`` from a site against a real gateway process over mutual TLS: every item passes against a
healthy gateway; against gateways with one fault each, exactly that item fails with a useful reason."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.security.passwords import hash_password

from .conftest import BMRGW, free_port, write_yaml
from .golive import Office, issue_pair, make_office
from .sntp import SntpResponder

PASSWORD = "接続試験-pass"
HASH = hash_password(PASSWORD)
ITEMS = ["dns", "tcp", "tls", "client_cert", "basic", "ntp", "echo", "jx", "refdb", "files"]
RESIDENTS = Path(__file__).parent / "data" / "refdb"


def gateway_config(tmp_path: Path, office: Office, ntp: SntpResponder, port: int, fault: str,
                   receiver: int = 9) -> dict[str, Any]:
    server = issue_pair(office, tmp_path / "gw", "gateway")
    client_ca = tmp_path / "gw" / "client-ca.pem"
    trusted = make_office(tmp_path / "other", "Other") if fault == "wrong CA" else office
    client_ca.write_bytes(trusted.root.read_bytes() + trusted.intermediate.read_bytes())
    city: dict[str, Any] = {
        "cert_subject": "CN=city-a,O=LGPKI,C=JP",
        "basic": {"user": "city-a", "password_hash": hash_password("another") if fault == "wrong password" else HASH},
        "allow": ["echo", "filecheck"], "senders": ["juki"],
        "jx": {"send": ["1310001"], "receive": ["9999999"]} if fault != "JX refused" else {"receive": ["9999999"]},
    }
    echo: dict[str, Any] = {"echo": True, **({"disabled": True} if fault == "endpoint down" else {})}
    return {"gateway": {"name": "gw-check", "listen": {"host": "127.0.0.1", "port": port},
                        "db": f"sqlite:///{tmp_path}/check.db", "data_dir": str(tmp_path / "var"),
                        "tls": {"cert": str(server[0]), "key": str(server[1]), "client_ca": str(client_ca)},
                        "ntp": {"servers": [ntp.address]}},
            "clients": {"city-a": city, "other-app": {"basic": {"user": "other", "password_hash": HASH}}},
            "endpoints": {"echo": echo, "filecheck": {"url": f"http://127.0.0.1:{receiver}/"}}, "refdb": {"datasets": {"residents": residents(fault)}}}


def residents(fault: str) -> dict[str, Any]:
    from ruamel.yaml import YAML
    dataset: dict[str, Any] = YAML(typ="safe", pure=True).load((RESIDENTS / "residents.yaml").read_text())
    dataset["owner"] = "other-app" if fault == "refdb not owner" else "city-a"
    dataset["readers"] = []
    return dataset


@pytest.fixture
def office(tmp_path: Path) -> Office:
    return make_office(tmp_path / "office")


@pytest.fixture
def site(tmp_path: Path, office: Office) -> Path:
    folder = tmp_path / "site"
    cert, key = issue_pair(office, folder, "city-a", purpose="client", subject="CN=city-a,O=LGPKI,C=JP")
    (folder / "password").write_text(PASSWORD, encoding="utf-8")
    (folder / "root.pem").write_bytes(office.root.read_bytes())
    path = folder / "site.yaml"
    write_yaml(path, {"name": "city-a", "gateway": "https://127.0.0.1:0", "ca": "root.pem", "cert": cert.name,
                      "key": key.name, "basic": {"user": "city-a", "password_file": "password"}, "sender": "juki",
                      "echo": "echo", "jx": {"sender": "1310001", "receiver": "9999999"}, "timeout": 10,
                      "refdb": {"dataset": "residents", "file": "residents.csv"},
                      "files": {"to": "filecheck", "size": 200_000, "part_size": 65536}})
    (folder / "residents.csv").write_bytes((RESIDENTS / "residents.csv").read_bytes())
    return path


@pytest.fixture
def run_gateway(tmp_path: Path, office: Office) -> Iterator[Any]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(fault: str, shift: float = 0.0) -> tuple[int, Path]:
        ntp = SntpResponder(shift=shift).start()
        port, receiver = free_port(), free_port()
        if fault != "receiver down":  # the data centre's test receiver for file transfer
            procs.append(subprocess.Popen([*BMRGW, "receive", "--port", str(receiver), "--dir",
                                           str(tmp_path / "received"), "--min-free-bytes", "0",
                                           "--log-level", "WARNING"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        path = tmp_path / "gw.yaml"
        write_yaml(path, gateway_config(tmp_path, office, ntp, port, fault, receiver))
        proc = subprocess.Popen([*BMRGW, "serve", "--config", str(path), "--log-level", "WARNING"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(proc)
        wait_listening(port, proc, office)
        return port, path

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()


def wait_listening(port: int, proc: subprocess.Popen[bytes], office: Office) -> None:
    """Until the gateway completes a TLS handshake (it presents its certificate: the app is serving)."""
    context = ssl.create_default_context(cafile=str(office.root))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock, \
                    context.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
                if tls.getpeercert(binary_form=True):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("the gateway did not start")


def check(site: Path, port: int, tmp_path: Path) -> tuple[int, dict[str, Any], str]:
    text = site.read_text().replace("127.0.0.1:0", f"127.0.0.1:{port}")
    site.write_text(text)
    done = subprocess.run([*BMRGW, "check", "--site", str(site), "--report", str(tmp_path / "report" / "check")],
                          capture_output=True, text=True, timeout=120)
    assert "Traceback" not in done.stderr, done.stderr
    report = json.loads((tmp_path / "report" / "check.json").read_text(encoding="utf-8"))
    return done.returncode, report, done.stdout


def statuses(report: dict[str, Any]) -> dict[str, str]:
    return {item["id"]: item["status"] for item in report["items"]}


def test_every_item_passes_against_a_healthy_gateway(tmp_path: Path, site: Path, run_gateway: Any) -> None:
    port, config = run_gateway("none")
    code, report, out = check(site, port, tmp_path)
    assert code == 0, out
    assert statuses(report) == {item: "pass" for item in ITEMS}, out
    assert "名前解決 / DNS resolution" in out and "合格 / PASSED" in out
    html = (tmp_path / "report" / "check.html").read_text(encoding="utf-8")
    echo = next(i for i in report["items"] if i["id"] == "echo")
    assert echo["message_ids"] and echo["message_ids"][0] in html and "<script" not in html
    # The test file is complete at the data centre's receiver.
    received = [p for p in (tmp_path / "received").iterdir() if p.name.startswith("bmrgw-check-")]
    assert len(received) == 1 and received[0].stat().st_size == 200_000
    # The refdb dry run was aborted: the dataset is still empty.
    refdb = next(i for i in report["items"] if i["id"] == "refdb")
    assert refdb["detail"].startswith("4 records of residents.csv accepted"), refdb
    assert query_residents(site, port) == []
    # The data centre finds the same exchanges in its send/receive log by those ids.
    for item in ("echo", "jx"):
        message_id = next(i for i in report["items"] if i["id"] == item)["message_ids"][0]
        logs = subprocess.run([*BMRGW, "logs", "--config", str(config), "--message-id", message_id, "--format", "json"],
                              capture_output=True, text=True, timeout=60)
        assert logs.returncode == 0 and message_id in logs.stdout, (item, logs.stdout, logs.stderr)


def query_residents(site: Path, port: int) -> list[Any]:
    import ssl as ssl_module

    from refdb.client import RefdbClient
    folder = site.parent
    context = ssl_module.create_default_context(cafile=str(folder / "root.pem"))
    context.load_cert_chain(folder / "city-a.pem", folder / "city-a-key.pem")
    with RefdbClient(f"https://127.0.0.1:{port}", user="city-a", password=PASSWORD, ssl_context=context) as client:
        return client.query("residents").records


FAULTS = {
    "wrong CA": ("client_cert", "refuses the site's certificate", "client_ca"),
    "wrong password": ("basic", "refuses user 'city-a'", "password"),
    "endpoint down": ("echo", "disabled", "ask the data centre"),
    "NTP skewed": ("ntp", "more than 1 s", "same NTP servers"),
    "JX refused": ("jx", "PutDocument refused", "jx.send"),
    "refdb not owner": ("refdb", "would be refused", "refdb.datasets.residents.owner"),
    "receiver down": ("files", "did not arrive complete", "is down"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_one_fault_fails_exactly_its_item(tmp_path: Path, site: Path, run_gateway: Any, fault: str) -> None:
    item, reason, fix = FAULTS[fault]
    port, _ = run_gateway(fault, shift=30.0 if fault == "NTP skewed" else 0.0)
    code, report, out = check(site, port, tmp_path)
    assert code == 1
    found = statuses(report)
    assert [i for i, s in found.items() if s == "fail"] == [item], out
    failed = next(i for i in report["items"] if i["id"] == item)
    assert reason in failed["reason"] and fix in failed["fix"], failed
    if fault == "NTP skewed":  # the SNTP responder serves the gateway a clock 30 s ahead
        assert 29.5 < float(failed["reason"].split("differ by ")[1].split(" s")[0]) < 30.5
    assert all(s in ("pass", "skip") for i, s in found.items() if i != item)
    assert "原因 / reason" in out and "不合格 / FAILED (1 item(s))" in out


def test_a_gateway_that_is_down_fails_tcp_and_skips_the_rest(tmp_path: Path, site: Path) -> None:
    code, report, out = check(site, free_port(), tmp_path)
    assert code == 1
    assert statuses(report) == {"dns": "pass", "tcp": "fail", **{i: "skip" for i in ITEMS[2:]}}
    assert "cannot connect" in report["items"][1]["reason"]
    assert all(i["detail"] == "not tried: tcp failed" for i in report["items"][2:])


def test_healthz_shows_the_gateway_time(tmp_path: Path, run_gateway: Any, office: Office) -> None:
    port, _ = run_gateway("none")
    client = issue_pair(office, tmp_path / "c", "city-a", purpose="client", subject="CN=city-a,O=LGPKI,C=JP")
    context = ssl.create_default_context(cafile=str(office.root))
    context.load_cert_chain(*client)
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", timeout=5, context=context) as resp:  # noqa: S310
        body = json.loads(resp.read())
    assert abs(body["ntp"]["time"] - time.time()) < 5


def test_the_jx_client_keeps_its_ca_whatever_the_environment(
        tmp_path: Path, run_gateway: Any, office: Office, monkeypatch: pytest.MonkeyPatch) -> None:
    # requests lets $REQUESTS_CA_BUNDLE replace Session.verify; bmrgw poll and check must keep ca:.
    from gateway.jx.client import Credentials, JxClient
    port, _ = run_gateway("none")
    cert, key = issue_pair(office, tmp_path / "c", "city-a", purpose="client", subject="CN=city-a,O=LGPKI,C=JP")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(make_office(tmp_path / "elsewhere", "Elsewhere").root))
    client = JxClient(f"https://127.0.0.1:{port}/jx", sender="1310001", timeout=10, credentials=Credentials(
        user="city-a", password=PASSWORD, cert=cert, key=key, ca=office.root))
    assert client.put_streamed({"messageId": "env-1", "senderId": "1310001", "receiverId": "9999999",
                                "formatType": "text/plain", "documentType": "t.txt", "compressType": ""}, [b"x"]) is True


@pytest.mark.parametrize(("entry", "problem"), [
    ({"echo": "yes"}, "write echo: true"),
    ({"echo": True, "url": "http://127.0.0.1:9/"}, "exactly one of"),
    ({"echo": True, "timeout": 5}, "answered by the gateway itself"),
])
def test_echo_endpoint_settings_are_checked(entry: dict[str, Any], problem: str) -> None:
    from gateway.errors import ConfigError
    from routing.config import parse_config
    with pytest.raises(ConfigError, match=problem):
        parse_config({"endpoints": {"echo": entry}})
