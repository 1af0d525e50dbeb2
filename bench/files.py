"""File transfer scenario: a big file through bmrgw (send → gateway → receive) against a raw upload.

Both move the same file over loopback in the same run:

- **raw**: ``curl -T FILE`` to nginx, which streams it (``proxy_request_buffering
  off``) to a sink that writes it to disk while hashing it (``bench/sink.py``);
- **bmrgw**: ``bmrgw send FILE --part-size 64M`` to ``bmrgw serve``, which relays
  each part (SwA multipart/related) to ``bmrgw receive``, which verifies each
  part and the whole file and publishes it.

Judged by: bmrgw's throughput ≥ 0.5 × raw's, and every bmrgw process (sender,
gateway, receiver) under 100 MB peak RSS (the kernel's ``VmHWM`` of each,
the sender's read until it exits).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from .harness import Bench, Check, Section
from .procs import LOOPBACK, BenchError, Server, free_port, start_server
from .servers import nginx_conf

__all__ = ["FileTransfer"]

MIB = 1024 * 1024
_READY = 30.0
_HEADERS = ("path", "seconds", "MiB/s", "× raw", "peak RSS MiB sender/gateway/receiver")


@dataclass(frozen=True, kw_only=True)
class FileTransfer:
    """One file of ``bench.settings.file_mib`` MiB, raw through nginx and through bmrgw."""

    name: str
    title: str
    part_mib: int = 64
    at_least: float = 0.5
    rss_limit_mib: float = 100.0

    def run(self, bench: Bench) -> Section:
        bench.close_stack()
        folder = bench.workdir / "files"
        folder.mkdir(exist_ok=True)
        size = bench.settings.file_mib * MIB
        bench.log(f"{self.name}: writing a {bench.settings.file_mib} MiB test file")
        source, digest = _make_file(folder / "transfer.bin", size)
        with ExitStack() as exits:
            raw = _raw_upload(bench, folder, source, digest, exits)
        with ExitStack() as exits:
            gateway = _bmrgw_transfer(bench, folder, source, digest, self.part_mib, exits)
        source.unlink()
        return self._section(size, raw, gateway)

    def _section(self, size: int, raw: float, result: _Transfer) -> Section:
        ratio = raw / result.seconds
        rss = result.rss
        checks = [Check(label=f"{self.name}: bmrgw MiB/s ÷ raw nginx upload MiB/s", measured=ratio,
                        limit=self.at_least, unit="×", at_least=True)]
        checks += [Check(label=f"{self.name}: peak RSS of bmrgw {name}", measured=mib, limit=self.rss_limit_mib,
                         unit="MiB", at_least=False) for name, mib in rss.items()]
        rows = [["raw (curl → nginx → sink)", f"{raw:.2f}", f"{size / MIB / raw:,.1f}", "1.00", "-"],
                [f"bmrgw (send → serve → receive, {self.part_mib} MiB parts)", f"{result.seconds:.2f}",
                 f"{size / MIB / result.seconds:,.1f}", f"{ratio:.2f}", "/".join(f"{v:.0f}" for v in rss.values())]]
        return Section(name=self.name, title=self.title, headers=_HEADERS, rows=rows, checks=checks,
                       notes=[f"File: {size // MIB} MiB; sha256 checked at the far end of both paths."],
                       raw={"bytes": size, "raw_seconds": raw, "bmrgw_seconds": result.seconds,
                            "ratio": ratio, "peak_rss_mib": rss})


@dataclass(frozen=True, kw_only=True)
class _Transfer:
    seconds: float
    rss: dict[str, float]


def _make_file(path: Path, size: int) -> tuple[Path, str]:
    """A file of ``size`` bytes whose every MiB differs (no dedup, compresses poorly)."""
    digest = hashlib.sha256()
    block = bytearray(os.urandom(MIB))
    with path.open("wb") as out:
        for n in range(-(-size // MIB)):
            block[:8] = n.to_bytes(8, "big")
            chunk = bytes(block[:min(MIB, size - n * MIB)])
            digest.update(chunk)
            out.write(chunk)
    return path, digest.hexdigest()


def _launch(name: str, argv: list[str], log: Path, ready: str, exits: ExitStack) -> Server:
    server = start_server(name, argv, log=log)
    exits.callback(server.stop)
    server.wait_ready(ready, timeout=_READY)
    return server


def _raw_upload(bench: Bench, folder: Path, source: Path, digest: str, exits: ExitStack) -> float:
    sink_port, nginx_port = free_port(), free_port()
    _launch("upload sink", [sys.executable, "-m", "bench.sink", "--port", str(sink_port), "--dir",
                            str(folder / "sink")], folder / "sink.log", f"http://{LOOPBACK}:{sink_port}/", exits)
    prefix = folder / f"nginx-{nginx_port}"
    prefix.mkdir()
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_conf(prefix, port=nginx_port, upstream=f"{LOOPBACK}:{sink_port}", upload=True))
    url = f"http://{LOOPBACK}:{nginx_port}/upload"
    _launch("nginx (upload)", [str(bench.tools.nginx), "-p", str(prefix), "-c", str(conf), "-e",
                               str(prefix / "error.log")], prefix / "stdout.log", url, exits)
    bench.log("files: raw upload through nginx")
    started = time.monotonic()
    done = subprocess.run(["curl", "-sS", "--fail", "-T", str(source), "-H", "Expect:", url],
                          capture_output=True, text=True)
    seconds = time.monotonic() - started
    if done.returncode != 0 or json.loads(done.stdout or "{}").get("sha256") != digest:
        raise BenchError(f"raw upload through nginx failed: {done.stderr.strip() or done.stdout[:200]}")
    bench.log(f"files: raw {seconds:.2f} s")
    return seconds


def _bmrgw_transfer(bench: Bench, folder: Path, source: Path, digest: str, part_mib: int,
                    exits: ExitStack) -> _Transfer:
    recv_port, gw_port = free_port(), free_port()
    inbox = folder / "inbox"
    bmrgw = str(bench.tools.bmrgw)
    receiver = _launch("bmrgw receive", [bmrgw, "receive", "--port", str(recv_port), "--dir", str(inbox),
                                         "--log-level", "WARNING"], folder / "receive.log",
                       f"http://{LOOPBACK}:{recv_port}/files?wsdl", exits)
    data = folder / "gateway"
    data.mkdir()
    config = data / "endpoints.yaml"
    config.write_text(f"""gateway:
  name: bench-files
  listen: {{host: {LOOPBACK}, port: {gw_port}}}
  db: "sqlite:///{data}/bmrgw.db"
  data_dir: "{data}"
endpoints:
  files: {{url: "http://{LOOPBACK}:{recv_port}/files", timeout: 300}}
""")
    gateway = _launch("bmrgw serve (files)", [bmrgw, "serve", "--config", str(config), "--log-level", "WARNING"],
                      data / "gateway.log", f"http://{LOOPBACK}:{gw_port}/healthz", exits)
    bench.log(f"files: bmrgw send, {part_mib} MiB parts")
    started = time.monotonic()
    sender_peak = 0.0
    with (folder / "send.log").open("wb") as out:
        sender = subprocess.Popen([bmrgw, "send", str(source), "--to", "files", "--gateway",
                                   f"http://{LOOPBACK}:{gw_port}/soap", "--part-size", f"{part_mib}M"],
                                  stdout=out, stderr=subprocess.STDOUT)
        # VmHWM until it exits: a child's rusage would also count our memory from before its exec.
        while sender.poll() is None:
            sender_peak = max(sender_peak, _vm_hwm_mib(sender.pid) or 0.0)
            time.sleep(0.02)
    seconds = time.monotonic() - started
    if sender.returncode != 0 or _sha256(inbox / source.name) != digest:
        raise BenchError(f"bmrgw send failed ({sender.returncode}): {(folder / 'send.log').read_text()[-500:]}")
    rss = {"sender": sender_peak, "gateway": _peak_mib(gateway), "receiver": _peak_mib(receiver)}
    bench.log(f"files: bmrgw {seconds:.2f} s, peak RSS MiB {rss}")
    (inbox / source.name).unlink()
    return _Transfer(seconds=seconds, rss=rss)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


def _vm_hwm_mib(pid: int) -> float | None:
    """The peak resident memory of a running process, None once it is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    return next((int(line.split()[1]) / 1024 for line in lines if line.startswith("VmHWM:")), None)


def _peak_mib(server: Server) -> float:
    peak = _vm_hwm_mib(server.process.pid)
    if peak is None:
        raise BenchError(f"no VmHWM for {server.name}")
    return peak
