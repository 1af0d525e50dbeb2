"""``bmrgw poll`` uses nothing POSIX-only (issue 21, item 4: city hall PCs often run Windows).

There is no Windows machine in CI, so the test takes the next best thing: the
real client process, started with every POSIX-only name the product could
reach for removed from ``os`` and ``signal`` and the POSIX-only modules made
unimportable, polls a real gateway with a ``poll.yaml`` — hooks, a Japanese
folder and file name included — and must do all of it.  Any such call in the
client would end it with an AttributeError or ImportError.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiohttp

from .conftest import GatewayFactory, write_yaml
from .jxhelp import get, put

#: Names Windows' ``os`` and ``signal`` do not have (those CPython's own subprocess needs on Linux stay).
POSIX_OS = ("fork", "forkpty", "getuid", "geteuid", "getgid", "setsid", "setpgid", "killpg", "getpgid", "chown",
            "fchown", "lchown", "fchmod", "O_DIRECTORY", "O_CLOEXEC", "O_NOFOLLOW", "O_NOCTTY", "statvfs",
            "fstatvfs", "sync", "sched_setscheduler", "SCHED_IDLE", "nice", "getloadavg", "uname", "mkfifo")
POSIX_SIGNALS = ("SIGHUP", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGQUIT", "SIGPIPE", "alarm", "setitimer")
POSIX_MODULES = ("fcntl", "pwd", "grp", "resource", "termios", "pty", "tty")

RUNNER = f"""
import os, signal, sys
for name in {POSIX_OS!r}:
    if hasattr(os, name):
        delattr(os, name)
for name in {POSIX_SIGNALS!r}:
    if hasattr(signal, name):
        delattr(signal, name)
for name in {POSIX_MODULES!r}:
    sys.modules[name] = None
from gateway.cli import main
sys.exit(main(sys.argv[1:]))
"""

HOOK = "import sys; open(sys.argv[1], 'a', encoding='utf-8').write('|'.join(sys.argv[2:]) + '\\n')"


async def test_the_client_runs_without_posix_only_calls(gateway: GatewayFactory, http: aiohttp.ClientSession,
                                                       tmp_path: Path) -> None:
    url = await gateway({"gateway": {"name": "dc-win", "data_dir": str(tmp_path / "var")}})
    await put(http, url, "住民異動 2026-04.csv", "氏名,住所\n".encode("cp932"), receiver="1310001")
    outbox = tmp_path / "C_ 送信"
    outbox.mkdir()
    (outbox / "回答 1.csv").write_bytes(b"ok")
    calls = tmp_path / "calls.txt"
    config = tmp_path / "poll.yaml"
    write_yaml(config, {"log_file": "logs\\..\\poll.log", "partners": {"dc": {
        "server": f"{url}/jx", "receiver_id": "1310001", "out": "受信 フォルダ", "outbox": str(outbox),
        "compression": "zip", "schedule": {"every": "1s"},
        "after": [sys.executable, "-c", HOOK, str(calls)], "before": [sys.executable, "-c", HOOK, str(calls)]}}})
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", RUNNER, "poll", "--config", str(config),
                                                "--once", stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, out.decode()
    received = tmp_path / "受信 フォルダ" / "住民異動 2026-04.csv"
    assert received.read_bytes() == "氏名,住所\n".encode("cp932")
    assert calls.read_text(encoding="utf-8").splitlines() == [str(outbox / "回答 1.csv"), str(received)]
    uploaded = await get(http, url, receiver="DC")
    assert uploaded.text(".//jx:compressType") == "zip" and uploaded.text(".//jx:documentType") == "回答 1.csv"
