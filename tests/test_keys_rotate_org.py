"""``bmrgw keys rotate --org``: one organisation gets a new data key generation and its stored
documents and mailbox messages are re-sealed under it while a real gateway serves, resumably after
a SIGKILL; ``bmrgw keys status`` counts what is still sealed under an older generation."""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import create_engine, text

from gateway.cli import main

from .conftest import GatewayFactory, message, soap11_headers, write_yaml
from .jxhelp import confirm, get, put
from .pg import pg_schema

ROOT = Path(__file__).resolve().parent.parent

#: Runs ``bmrgw`` and SIGKILLs itself as the second re-sealing batch begins (the first one committed).
KILLED_AFTER_ONE_BATCH = """
import os, signal, sys
import gateway.jx.reseal as reseal
real, calls = reseal.reseal_batch, []
def batch(*args, **kw):
    calls.append(1)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kw)
reseal.reseal_batch = batch
from gateway.cli import main
sys.exit(main(sys.argv[1:]))
"""


@contextlib.contextmanager
def store_url(tmp_path: Path, blobs: str) -> Iterator[str]:
    if blobs in ("files", "auto"):
        yield f"sqlite:///{tmp_path}/db/bmrgw.db"
    else:
        with pg_schema() as url:
            yield url


def gateway_store(tmp_path: Path, blobs: str, pg_url: str) -> contextlib.nullcontext[str]:
    """:func:`store_url` for a test whose ``gateway`` serves it: PostgreSQL is the ``pg_url`` fixture,
    named before ``gateway`` so that the schema outlives the test's gateways."""
    return contextlib.nullcontext(f"sqlite:///{tmp_path}/db/bmrgw.db" if blobs in ("files", "auto") else pg_url)


def configure(tmp_path: Path, db: str, blobs: str) -> tuple[dict[str, Any], Path]:
    key = tmp_path / "keys" / "master.key"
    assert main(["keys", "init", str(key)]) == 0
    config = {"gateway": {"name": "gw", "db": db, "data_dir": str(tmp_path / "var"), "jx": {"blobs": blobs},
                          "encryption": {"master_key": str(key)}},
              "endpoints": {"cityhall": {"mailbox": "131a"}}}
    path = tmp_path / "rotate.yaml"
    write_yaml(path, config)
    return config, path


def sealed_generations(db: str, tmp_path: Path) -> dict[str, int]:
    """message id → the data key generation its stored bytes name (read from the store itself)."""
    engine = create_engine(db)
    try:
        with engine.connect() as c:
            rows = c.execute(text("SELECT seq, message_id, blob FROM jx_document")).all()
            found = {}
            for seq, message_id, blob in rows:
                if blob is not None:
                    head = (tmp_path / "var" / "jx" / "blobs" / blob).read_bytes()[:9]
                else:
                    head = bytes(c.execute(text("SELECT data FROM jx_blob WHERE doc_seq = :s AND part = 0"),
                                           {"s": seq}).scalar_one())[:9]
                assert head[:5] == b"BMRS\x01", f"{message_id} is sealed"
                found[message_id] = struct.unpack(">I", head[5:9])[0]
            return found
    finally:
        engine.dispose()


def in_files(db: str) -> set[str]:
    """The message ids whose bytes are a file under blobs/ (the others are jx_blob rows)."""
    engine = create_engine(db)
    try:
        with engine.connect() as c:
            return {m for m, in c.execute(text("SELECT message_id FROM jx_document WHERE blob IS NOT NULL"))}
    finally:
        engine.dispose()


def stored_bytes(db: str, tmp_path: Path, receiver: str) -> dict[str, bytes]:
    engine = create_engine(db)
    try:
        with engine.connect() as c:
            rows = c.execute(text("SELECT seq, message_id, blob FROM jx_document WHERE receiver_id = :r"),
                             {"r": receiver}).all()
            return {message_id: (tmp_path / "var" / "jx" / "blobs" / blob).read_bytes() if blob is not None else
                    b"".join(bytes(d) for d, in c.execute(text(
                        "SELECT data FROM jx_blob WHERE doc_seq = :s ORDER BY part"), {"s": seq}))
                    for seq, message_id, blob in rows}
    finally:
        engine.dispose()


def live_generations(db: str) -> dict[str, list[int]]:
    engine = create_engine(db)
    try:
        with engine.connect() as c:
            rows = c.execute(text("SELECT org, generation FROM crypto_data_key WHERE wrapped IS NOT NULL "
                                  "ORDER BY org, generation")).all()
    finally:
        engine.dispose()
    out: dict[str, list[int]] = {}
    for org, generation in rows:
        out.setdefault(org, []).append(generation)
    return out


def status(path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(["keys", "status", "--config", str(path)]) == 0
    return capsys.readouterr().out


async def store_documents(http: aiohttp.ClientSession, url: str) -> dict[str, bytes]:
    """Documents for 131a (one confirmed, one of two database parts, a mailbox message) and one for 131b."""
    docs = {"a-small": b"rates of 131a", "a-big": os.urandom(1_200_000), "a-done": b"confirmed already"}
    for message_id, data in docs.items():
        assert (await put(http, url, message_id, data, receiver="131a")).result is True
    got = await get(http, url, "131a")
    assert got.text(".//jx:messageId") == "a-small"
    assert (await confirm(http, url, "a-small", receiver="131a")).result is True
    envelope = message("valid/soap11-routing-header.xml").replace(b"<r:To>demo</r:To>", b"<r:To>cityhall</r:To>")
    async with http.post(f"{url}/soap", data=envelope, headers=soap11_headers()) as resp:
        assert resp.status == 200
        docs[resp.headers["X-Message-Id"]] = envelope
    assert (await put(http, url, "b-doc", b"rates of 131b", receiver="131b")).result is True
    return docs


async def get_all(http: aiohttp.ClientSession, url: str, receiver: str) -> dict[str, bytes]:
    """Every ready document of ``receiver`` through GetDocument, each confirmed."""
    got = {}
    while (answer := await get(http, url, receiver)).result is True and answer.text(".//jx:messageId"):
        message_id = answer.text(".//jx:messageId") or ""
        got[message_id] = answer.data
        assert (await confirm(http, url, message_id, sender=answer.text(".//jx:senderId") or "DC",
                              receiver=receiver)).result is True
    return got


def run(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args, "keys", "rotate", "--config", str(path), "--org", "131a",
                           "--batch", "1"], cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("blobs", ["files", "auto", "database"],
                         ids=["sqlite-files", "sqlite-small-rows-big-files", "postgresql-rows"])
async def test_rotate_org_reseals_its_content_resumes_after_a_kill_and_leaves_others_alone(
        pg_url: str, gateway: GatewayFactory, tmp_path: Path, http: aiohttp.ClientSession, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, blobs: str) -> None:
    monkeypatch.setattr("gateway.crypto.ring.RECHECK_SECONDS", 0.0)  # gateways see a new generation at once
    with gateway_store(tmp_path, blobs, pg_url) as db:
        config, path = configure(tmp_path, db, blobs)
        url = await gateway(config)
        docs = await store_documents(http, url)
        a_ids = set(docs)
        other = stored_bytes(db, tmp_path, "131b")
        assert set(sealed_generations(db, tmp_path).values()) == {1}
        if blobs == "auto":  # SQLite's default: small documents in jx_blob rows, the big one a file
            assert in_files(db) == {"a-big"}
        assert "131a\tunder an older generation: 0 document(s), 0 bytes" in status(path, capsys)

        killed = await asyncio.to_thread(run, path, "-c", KILLED_AFTER_ONE_BATCH)
        assert killed.returncode == -9, killed.stderr
        assert "made data key generation 2" in killed.stdout
        assert live_generations(db) == {"131a": [1, 2], "131b": [1]}, "the old key stays while content uses it"
        generations = {m: g for m, g in sealed_generations(db, tmp_path).items() if m in a_ids}
        assert sorted(generations.values()) == [1, 1, 1, 2], "one batch of one document was re-sealed"
        left = sum(len(docs[m]) for m, g in generations.items() if g == 1)
        shown = status(path, capsys)
        assert f"131a\tunder an older generation: 3 document(s), {left} bytes" in shown
        assert "131a\tgeneration 2\t" in shown and "\t1 document(s), " in shown.split("131a\tgeneration 2")[1]

        assert (await put(http, url, "a-new", b"after the new generation", receiver="131a")).result is True
        assert sealed_generations(db, tmp_path)["a-new"] == 2, "new content is sealed under the newest at once"
        docs["a-new"] = b"after the new generation"
        assert await get_all(http, url, "131a") == {m: d for m, d in docs.items() if m != "a-small"}, \
            "reads work under both live generations mid-rotation"

        capsys.readouterr()
        assert await asyncio.to_thread(main, ["keys", "rotate", "--config", str(path), "--org", "131a",
                                              "--batch", "1"]) == 0
        out = capsys.readouterr().out
        assert "continuing the rotation to generation 2" in out and "deleted 1 older data key(s)" in out
        generations = sealed_generations(db, tmp_path)
        assert {m: g for m, g in generations.items() if m in docs} == {m: 2 for m in docs}
        assert generations["b-doc"] == 1 and stored_bytes(db, tmp_path, "131b") == other, "131b untouched"
        assert live_generations(db) == {"131a": [2], "131b": [1]}, "generation 1 of 131a is deleted"
        shown = status(path, capsys)
        assert "131a\tunder an older generation: 0 document(s), 0 bytes" in shown
        assert "131a\tgeneration 1" not in shown and "131b\tgeneration 1\t" in shown

        # Every document of 131a, re-sealed, still reads back byte for byte (requeued: it was confirmed).
        for message_id in docs:
            assert main(["jx", "requeue", "--config", str(path), message_id]) == 0
        assert await get_all(http, url, "131a") == docs
        assert await get_all(http, url, "131b") == {"b-doc": b"rates of 131b"}


async def test_rotate_org_needs_an_organisation_with_a_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, path = configure(tmp_path, f"sqlite:///{tmp_path}/db/bmrgw.db", "files")
    assert main(["keys", "rotate", "--config", str(path), "--org", "nobody"]) == 1
    assert "'nobody' has no data key" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:
        main(["keys", "rotate", "--config", str(path), "--org", "x", "--batch", "0"])
    assert refused.value.code == 2 and "not a positive whole number" in capsys.readouterr().err
