"""Runs the hostile-input corpus through the parser's entry points in a child process.

A message that makes libxml2 read ``/dev/zero`` hangs the thread inside C code,
where neither pytest-timeout nor a signal can stop it; the child is killed
instead, and the files it had not tried yet are run in a fresh one.

``python -m tests.hostile ENTRY FILE...`` prints, per file, a line
``started<TAB>name`` and then ``done<TAB>name<TAB>outcome<TAB>message``.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROUTING = "{urn:bmrgw:routing:1}Routing"
#: A streamed body is one the relay does not read whole: more than gateway.parser.SCAN_WHOLE bytes.
STREAMED = 9000
#: Where dtd-parameter-entity-fifo.xml points: a FIFO nobody writes to blocks whoever opens it.
FIFO = Path("/tmp/bmrgw-hostile-input.fifo")
#: Text that would show that a file named by a message was read.
LEAKS = (b"root:x:0:0", b"root:", b"PATH=", b"HOME=")


@dataclass(frozen=True)
class Outcome:
    outcome: str
    """Exception class name, ``ok`` when nothing was raised, ``hung`` when the child had to be killed."""
    message: str = ""


def padded(data: bytes) -> bytes:
    """``data`` made longer than the relay reads whole, by whitespace after the root (where XML allows it)."""
    return data + b"\n" * max(0, STREAMED - len(data))


def make_fifo() -> None:
    try:
        os.mkfifo(FIFO)
    except FileExistsError:
        pass


def _entries() -> dict[str, Callable[[bytes], object]]:
    from gateway.parser import HeadScanner, parse, scan_head
    from gateway.relay.outline import EnvelopeOutline

    def outline(data: bytes, step: int) -> object:
        check = EnvelopeOutline()
        for start in range(0, len(data), step):
            check.feed(data[start:start + step])
        check.close()
        return check

    def scanner(data: bytes, step: int) -> object:
        scan = HeadScanner(routing_header=ROUTING, max_bytes=64 * 1024)
        for start in range(0, len(data), step):
            head = scan.feed(data[start:start + step])
            if head is not None:
                return head
        return scan.finish()

    return {
        "parse": lambda data: parse(data, max_bytes=1 << 20),
        "scan_head": lambda data: scan_head(data, routing_header=ROUTING),
        "scanner-7": lambda data: scanner(data, 7),
        "scanner-streamed": lambda data: scanner(padded(data), 1024),
        "outline-streamed": lambda data: outline(padded(data), 1024),
    }


def main(entry: str, paths: list[str]) -> None:
    run = _entries()[entry]
    for path in paths:
        name = Path(path).name
        print(f"started\t{name}", flush=True)
        try:
            run(Path(path).read_bytes())
            outcome, message = "ok", ""
        except Exception as exc:  # the outcome is what is reported
            outcome, message = type(exc).__name__, str(exc)
        print(f"done\t{name}\t{outcome}\t{message.replace(chr(10), ' ').replace(chr(9), ' ')}", flush=True)


def run_isolated(entry: str, paths: list[Path], *, per_file: float = 5.0) -> dict[str, Outcome]:
    """Outcome per file name; a file the child does not finish within ``per_file`` seconds is ``hung``."""
    results: dict[str, Outcome] = {}
    remaining = list(paths)
    while remaining:
        child = subprocess.Popen([sys.executable, "-m", "tests.hostile", entry, *map(str, remaining)],
                                 stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=Path(__file__).parent.parent)
        assert child.stdout is not None
        started: str | None = None
        deadline = time.monotonic() + per_file * 4  # the first file also pays for starting Python
        lines = b""
        while True:
            ready, _, _ = select.select([child.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                child.kill()
                child.wait()
                assert started is not None, f"{entry}: the child did not start"
                results[started] = Outcome("hung")
                break
            data = os.read(child.stdout.fileno(), 65536)
            if not data:
                if child.wait() != 0 and started is not None:
                    results[started] = Outcome("crashed", f"exit status {child.returncode}")
                break
            lines += data
            *complete, lines = lines.split(b"\n")
            for line in complete:
                kind, name, *rest = line.decode().split("\t")
                if kind == "started":
                    started, deadline = name, time.monotonic() + per_file
                else:
                    results[name] = Outcome(rest[0], rest[1])
                    started = None
        child.stdout.close()
        remaining = [p for p in remaining if p.name not in results]
    return results


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
