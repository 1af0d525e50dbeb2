"""``bmrgw keys rotate --org`` re-seals the organisation's staged file-transfer parts too (a receiving
business-AP's ``DIR/.bmrgw-partial/*/sealed/<n>``), resumably after a SIGKILL, and ``bmrgw keys
status`` counts the parts still sealed under an older generation — before this, the rotation left
them under the old key and then deleted that key, so the transfer could never be finished."""

from __future__ import annotations

import asyncio
import os
import struct
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from attachments.staging import STAGING_DIR
from attachments.transfer.receiver import ReceiveOptions, make_receiver_app
from attachments.transfer.sender import SendOptions, send_file
from gateway.cli import main
from gateway.crypto import vault_for
from gateway.store import Store
from routing.config import load_config

from .conftest import GatewayFactory, start_app, write_yaml
from .test_keys_rotate_org import live_generations

ROOT = Path(__file__).resolve().parent.parent

#: Runs ``bmrgw`` and SIGKILLs itself as the second staged part is about to be re-sealed.
KILLED_AFTER_ONE_PART = """
import os, signal, sys
import attachments.restage as restage
real, calls = restage.reseal_part, []
def part(*args, **kw):
    calls.append(1)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kw)
restage.reseal_part = part
from gateway.cli import main
sys.exit(main(sys.argv[1:]))
"""


def staged_generations(inbox: Path) -> dict[str, int]:
    """``fileId/n`` → the data key generation the sealed part names."""
    found = {}
    for path in sorted((inbox / STAGING_DIR).glob("*/sealed/*")):
        if path.name.isdigit():
            head = path.read_bytes()[:9]
            assert head[:5] == b"BMRS\x01"
            found[f"{path.parent.parent.name}/{path.name}"] = struct.unpack(">I", head[5:9])[0]
    return found


def rotate(path: Path, *prefix: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *prefix, "keys", "rotate", "--config", str(path), "--org", "files"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


def status(path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(["keys", "status", "--config", str(path)]) == 0
    return capsys.readouterr().out


async def test_rotate_org_reseals_staged_parts_resumes_after_a_kill_and_the_transfer_completes(
        gateway: GatewayFactory, tmp_path: Path, http: aiohttp.ClientSession, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gateway.crypto.ring.RECHECK_SECONDS", 0.0)
    key = tmp_path / "keys" / "master.key"
    assert main(["keys", "init", str(key)]) == 0
    (tmp_path / "db").mkdir(mode=0o700)
    db = f"sqlite:///{tmp_path}/db/bmrgw.db"
    path = tmp_path / "receiver.yaml"
    write_yaml(path, {"gateway": {"name": "gw", "db": db, "data_dir": str(tmp_path / "var"),
                                  "encryption": {"master_key": str(key)}}})
    config = load_config(path)
    assert config.gateway.encryption is not None
    keys = Store(db)
    inbox = tmp_path / "inbox"
    runner, receiver = await start_app(make_receiver_app(ReceiveOptions(
        directory=inbox, max_file_bytes=16 << 20, vault=vault_for(config.gateway.encryption, keys.engine),
        org="files")))
    try:
        url = await gateway({"gateway": {"name": "relay", "data_dir": str(tmp_path / "relay")},
                             "endpoints": {"files": {"url": f"{receiver}/files"}}})
        source = tmp_path / "out" / "juki.csv"
        source.parent.mkdir()
        source.write_bytes(os.urandom(300_000))
        options = SendOptions(path=source, to="files", gateway=url, part_size=64 * 1024)
        first = await send_file(SendOptions(**{**options.__dict__, "only_parts": frozenset({1, 2, 3})}))
        assert first.published is None and first.sent == 3
        assert sorted(staged_generations(inbox).values()) == [1, 1, 1]
        shown = status(path, capsys)
        assert "files\tstaged parts under an older generation: 0 part(s)" in shown

        killed = await asyncio.to_thread(rotate, path, "-c", KILLED_AFTER_ONE_PART)
        assert killed.returncode == -9, killed.stderr
        assert "made data key generation 2" in killed.stdout
        assert sorted(staged_generations(inbox).values()) == [1, 1, 2], "one part was re-sealed before the kill"
        assert live_generations(db) == {"files": [1, 2]}, "the old key stays while staged parts use it"
        assert "files\tstaged parts under an older generation: 2 part(s)" in status(path, capsys)

        capsys.readouterr()
        assert await asyncio.to_thread(main, ["keys", "rotate", "--config", str(path), "--org", "files"]) == 0
        out = capsys.readouterr().out
        assert "continuing the rotation to generation 2" in out
        assert "re-sealed 2 staged part(s)" in out
        assert sorted(staged_generations(inbox).values()) == [2, 2, 2]
        assert live_generations(db) == {"files": [2]}, "generation 1 is deleted once nothing uses it"
        assert "files\tstaged parts under an older generation: 0 part(s)" in status(path, capsys)
        assert not list((inbox / STAGING_DIR).rglob("*.reseal")), "no temporary file is left behind"

        finished = await send_file(options)  # the rest of the parts, sealed under generation 2
        assert finished.published == "juki.csv"
        assert (inbox / "juki.csv").read_bytes() == source.read_bytes()
    finally:
        await runner.cleanup()
        keys.close()
