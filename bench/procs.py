"""Server subprocesses: started on free loopback ports, waited for, always stopped.

Each server runs in a session of its own, so a Ctrl-C at the terminal reaches
only the harness, which then stops the servers itself (SIGTERM, and SIGKILL of
that session if they linger).  Nothing is left running after the harness
exits, whether it finished, failed or was interrupted.
"""

from __future__ import annotations

import getpass
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LOOPBACK", "BenchError", "Server", "cpu_seconds", "family", "free_port", "start_server"]

LOOPBACK = "127.0.0.1"
_STOP_GRACE = 5.0
_POLL = 0.1


class BenchError(RuntimeError):
    """Raised when the benchmark cannot produce a trustworthy number (a server
    does not come up, answers wrongly, or the load generator fails)."""


def free_port() -> int:
    """A loopback port nobody listens on now; the tiny race until the server
    binds it is acceptable on a machine reserved for the benchmark."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


@dataclass(kw_only=True)
class Server:
    """One running server process and the log its output goes to."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        """Stop gracefully, then kill the whole session the server started."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(_STOP_GRACE)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(_STOP_GRACE)

    def log_tail(self, lines: int = 15) -> str:
        """The end of the server's output, for error messages."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.rstrip().splitlines()[-lines:]) or "(log is empty)"

    def wait_ready(self, url: str, *, timeout: float) -> None:
        """Poll ``url`` until it answers 200; fail clearly if the server died or stayed silent."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"{self.name} exited with status {self.process.returncode} before "
                                 f"{url} answered; its output ends:\n{self.log_tail()}")
            last = _probe(url)
            if last == "200":
                return
            time.sleep(_POLL)
        raise BenchError(f"{self.name} did not answer 200 on {url} within {timeout:.0f} s "
                         f"(last: {last}); its output ends:\n{self.log_tail()}")


def _probe(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return str(response.status)
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        return type(exc).__name__


def start_server(name: str, argv: Sequence[str | os.PathLike[str]], *, log: Path) -> Server:
    """Start ``argv`` in its own session with stdout and stderr going to ``log``."""
    with log.open("wb") as out:
        try:
            process = subprocess.Popen(
                [os.fspath(a) for a in argv], stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        except OSError as exc:
            raise BenchError(f"cannot start {name} ({argv[0]}): {exc}") from exc
    return Server(name=name, process=process, log=log)


def cpu_seconds(pid: int) -> float:
    """CPU time used so far by ``pid`` and its descendants (nginx's worker is a child of its master)."""
    stats = _proc_stats()
    ticks = sum(stats[p][1] for p in family(pid, stats) if p in stats)
    return ticks / os.sysconf("SC_CLK_TCK")


def family(pid: int, stats: dict[int, tuple[int, int]] | None = None) -> set[int]:
    """``pid`` and all its descendants (bmrgw's workers are children of its supervisor)."""
    stats = _proc_stats() if stats is None else stats
    found, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, (ppid, _) in stats.items() if ppid == parent and p not in found]
        found.update(children)
        frontier.extend(children)
    return found


def _proc_stats() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, user+system clock ticks) for every process we can read."""
    stats: dict[int, tuple[int, int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: split after the last ")".
        fields = raw[raw.rindex(")") + 2:].split()
        stats[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    return stats


def nginx_head(prefix: Path, source: str) -> str:
    """The start of an nginx config for one benchmark run under ``prefix``, up to inside ``http {``:
    no daemon, one worker, temp files and logs under ``prefix``; run as root, the workers run as the
    run's user, so that they may read the files it wrote (the echo backend's answers)."""
    user = f"user {getpass.getuser()};" if os.geteuid() == 0 else ""
    temp = "\n".join(f"    {kind}_temp_path {prefix}/{kind}_temp;"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""# Generated by bench/{source} for one benchmark run.
daemon off;
master_process on;
worker_processes 1;
{user}
error_log {prefix}/error.log warn;
pid {prefix}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
{temp}
"""
