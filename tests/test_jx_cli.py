"""``bmrgw jx``: list, show, requeue, purge and put on the real store, next to a running gateway."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.cli import main
from gateway.jx import open_store

from .conftest import GatewayFactory, write_yaml
from .jxhelp import confirm, get, put


def jx(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main(["jx", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def stores_are_closed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every store a command opens has closed its connections when the command returns (the
    commands also run inside other programs, and these tests)."""
    import gateway.jx.commands

    opened: list[Any] = []

    def recorded(*args: Any, **kwargs: Any) -> Any:
        opened.append(open_store(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(gateway.jx.commands, "open_store", recorded)
    yield
    assert opened
    assert [(s.engine.pool.checkedin(), s.durable.pool.checkedin()) for s in opened] == [(0, 0)] * len(opened)


@pytest.fixture
def cfg(tmp_path: Path) -> tuple[dict[str, Any], Path]:
    data: dict[str, Any] = {"gateway": {"name": "dc-cli", "db": f"sqlite:///{tmp_path}/bmrgw-0.db",
                                        "data_dir": str(tmp_path / "var"),
                                        "jx": {"lease_seconds": 1.5, "max_deliveries": 1}}}
    path = tmp_path / "endpoints-cli.yaml"
    write_yaml(path, data)
    return data, path


async def test_put_is_polled_like_any_document(cfg: tuple[dict[str, Any], Path], gateway: GatewayFactory,
                                               tmp_path: Path, http: aiohttp.ClientSession,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    data, path = cfg
    url = await gateway(data)
    file = tmp_path / "notice.pdf"
    file.write_bytes(b"%PDF-1.4 " + bytes(range(256)) * 40)
    code, out, err = jx(capsys, "put", file, "--to", "1310001", "--message-id", "op-1", "--config", path)
    assert code == 0 and "stored: op-1" in out, err
    got = await get(http, url)
    assert got.data == file.read_bytes()
    assert (got.text(".//jx:documentType"), got.text(".//jx:formatType"), got.text(".//jx:senderId")) == (
        "notice.pdf", "FILE", "dc-cli")
    code, out, _ = jx(capsys, "put", file, "--to", "1310001", "--message-id", "op-1", "--config", path)
    assert code == 0 and "already stored" in out
    other = tmp_path / "other"
    other.write_bytes(b"different")
    code, _, err = jx(capsys, "put", other, "--to", "1310001", "--message-id", "op-1", "--config", path)
    assert code == 1 and "already stored with other content" in err and "Traceback" not in err


async def test_list_show_requeue_dead_letters_and_purge(cfg: tuple[dict[str, Any], Path], gateway: GatewayFactory,
                                                       tmp_path: Path, http: aiohttp.ClientSession,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    data, path = cfg
    url = await gateway(data)
    for n in range(3):
        await put(http, url, f"doc-{n}", f"body {n}".encode(), receiver="A" if n < 2 else "B")
    code, out, _ = jx(capsys, "list", "--config", path)
    assert code == 0 and [line.split()[0] for line in out.splitlines()[1:]] == ["doc-0", "doc-1", "doc-2"]
    code, out, _ = jx(capsys, "list", "--receiver", "B", "--format", "json", "--config", path)
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["message_id"], r["state"], r["size"]) for r in rows] == [("doc-2", "ready", 6)]

    assert (await get(http, url, receiver="A")).text(".//jx:messageId") == "doc-0"
    code, out, _ = jx(capsys, "list", "--state", "leased", "--config", path)
    assert "doc-0" in out and "doc-1" not in out
    await asyncio.sleep(1.6)  # the lease runs out
    # max_deliveries 1: doc-0 was handed out once without a confirm, so it is parked and doc-1 comes next.
    assert (await get(http, url, receiver="A")).text(".//jx:messageId") == "doc-1"
    code, out, _ = jx(capsys, "list", "--dead", "--config", path)
    assert out.splitlines()[1].split()[0] == "doc-0" and "dead" in out

    code, out, _ = jx(capsys, "requeue", "doc-0", "--config", path)
    assert code == 0 and "requeued doc-0" in out
    assert (await get(http, url, receiver="A")).text(".//jx:messageId") == "doc-0"
    assert (await confirm(http, url, "doc-0", receiver="A")).result is True

    saved = tmp_path / "saved.bin"
    code, out, _ = jx(capsys, "show", "doc-0", "--save", saved, "--config", path)
    assert code == 0 and "state:" in out and "confirmed" in out and saved.read_bytes() == b"body 0"

    code, out, _ = jx(capsys, "purge", "--confirmed-before", "1d", "--config", path)
    assert "purged 0 documents" in out  # confirmed just now: younger than a day
    code, out, _ = jx(capsys, "purge", "--confirmed-before", "2099-01-01", "--yes", "--config", path)
    assert "purged 1 document " in out
    code, _, err = jx(capsys, "show", "doc-0", "--config", path)
    assert code == 1 and "no document" in err
    assert not [p for p in (tmp_path / "var" / "jx" / "blobs").iterdir() if p.read_bytes() == b"body 0"]
    code, _, err = jx(capsys, "requeue", "nope", "--config", path)
    assert code == 1 and "no document 'nope'" in err
