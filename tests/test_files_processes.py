"""File transfer between real processes: bmrgw send → bmrgw serve → bmrgw receive, memory bounded.

A scaled-down version of the 1 GiB benchmark (bench/files.py): 64 MiB in
8 MiB parts; every process must stay under 100 MB peak RSS, so memory does
not grow with the file.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .conftest import BMRGW, GatewayProcess, free_port

MIB = 1024 * 1024
RSS_LIMIT_MIB = 100


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[str, Path, subprocess.Popen[bytes]]]:
    port, folder = free_port(), tmp_path / "inbox"
    proc = subprocess.Popen([*BMRGW, "receive", "--port", str(port), "--dir", str(folder), "--log-level", "WARNING"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/files"
    deadline = time.monotonic() + 15
    while True:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
        try:
            with urllib.request.urlopen(f"{url}?wsdl", timeout=1):
                break
        except OSError:
            assert time.monotonic() < deadline, "receiver did not start"
            time.sleep(0.1)
    yield url, folder, proc
    proc.terminate()
    proc.wait(timeout=10)
    if proc.stderr:
        proc.stderr.close()


def _big_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    block = os.urandom(MIB)
    with path.open("wb") as out:
        for n in range(size // MIB):
            # Each MiB differs, so neither zip nor a cache sees one repeated block.
            chunk = n.to_bytes(8, "big") + block[8:] if n % 2 else bytes(MIB // 2) + block[MIB // 2:]
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def run_measured(argv: list[str], log: Path) -> tuple[int, float]:
    """Run a command to its end; (exit code, its peak RSS in MiB).

    The peak is the kernel's VmHWM of the process, read until it exits: the
    rusage of a waited-for child would also count the parent's memory from
    before the child's exec (vfork shares it), not what the child used.
    """
    peak = 0.0
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            try:
                peak = max(peak, peak_rss_mib(proc.pid))
            except (OSError, AssertionError):
                pass  # exiting between poll() and the read
            time.sleep(0.02)
    return proc.returncode, peak


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["--mtom", "--zip"]], ids=["swa", "mtom-zip"])
def test_64_mib_in_8_mib_parts_keeps_every_process_under_100_mb(
        gateway_process: Callable[..., GatewayProcess], receiver: tuple[str, Path, subprocess.Popen[bytes]],
        tmp_path: Path, extra: list[str]) -> None:
    url, folder, receiving = receiver
    gw = gateway_process({"endpoints": {"files": {"url": url, "timeout": 120}}}, name="gw-files")
    source = tmp_path / "big.bin"
    digest = _big_file(source, 64 * MIB)
    code, sender_mib = run_measured([*BMRGW, "send", str(source), "--to", "files", "--gateway", f"{gw.url}/soap",
                                     "--part-size", "8M", *extra], tmp_path / "send.log")
    output = (tmp_path / "send.log").read_text()
    assert code == 0, output
    assert "8 parts" in output or "zipped" in output
    received = hashlib.sha256()
    with (folder / "big.bin").open("rb") as fh:
        while chunk := fh.read(MIB):
            received.update(chunk)
    assert received.hexdigest() == digest
    gateway_mib, receiver_mib = gw.peak_rss_kib() / 1024, peak_rss_mib(receiving.pid)
    print(f"peak RSS MiB: sender {sender_mib:.1f}, gateway {gateway_mib:.1f}, receiver {receiver_mib:.1f}")
    assert max(sender_mib, gateway_mib, receiver_mib) < RSS_LIMIT_MIB
