"""``python -m bench``: run the scenarios, print the report, write ``bench/RESULTS.md``.

Exit codes: 0 the run completed (whatever the verdicts), 1 it could not
measure (a server did not come up or answered wrongly, wrk failed), 2 bad
usage, 130 interrupted.  Every server is stopped on the way out in all cases.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from types import FrameType

from .harness import Bench, Section, Settings
from .procs import BenchError
from .report import Machine, render
from .scenarios import SCENARIOS
from .servers import TARGETS, Tools

__all__ = ["main"]

_HERE = Path(__file__).resolve().parent
RESULTS = _HERE / "RESULTS.md"
#: Raw numbers of the last written run (git-ignored), for comparing runs by script.
RAW = _HERE / "out" / "results.json"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = Settings(duration=args.duration, warmup=args.warmup, targets=args.targets, file_mib=args.file_mib,
                        soak=args.soak_duration, attack=args.attack_duration)
    chosen = [s for s in SCENARIOS if not args.only or s.name in args.only]
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        with ExitStack() as exits:
            tools = Tools.find(bmrgw=args.bmrgw)
            machine = Machine.describe(tools)
            workdir = _workdir(args.keep, exits)
            bench = Bench(tools=tools, workdir=workdir, settings=settings, exits=exits)
            sections = [scenario.run(bench) for scenario in chosen]
    except BenchError as exc:
        hint = "" if args.keep else "\n(rerun with --keep to keep the configs and server logs)"
        print(f"bench: {exc}{hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; all servers stopped", file=sys.stderr)
        return 130
    report = render(sections, machine=machine, settings=settings, command=_command(argv))
    print(report, end="")
    if not args.no_write:
        _write(report, sections)
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark bmrgw against calling the backend directly and against nginx as a "
        "pass-through proxy, in one run on loopback; print the report and write bench/RESULTS.md.",
    )
    names = [s.name for s in SCENARIOS]
    p.add_argument("--duration", type=int, default=10, metavar="S", help="measured seconds per cell (default: 10)")
    p.add_argument("--warmup", type=int, default=2, metavar="S", help="warm-up seconds per cell (default: 2)")
    p.add_argument("--only", type=_names(names, "scenario"), metavar="SCENARIO[,...]",
                   help=f"run only these scenarios, of: {', '.join(names)}")
    p.add_argument("--targets", type=_names(TARGETS, "target"), default=TARGETS, metavar="T[,...]",
                   help=f"measure only these targets, of: {', '.join(TARGETS)} (default: all)")
    p.add_argument("--file-mib", type=int, default=1024, metavar="MIB",
                   help="size of the file in the file-transfer scenario (default: 1024)")
    p.add_argument("--soak-duration", type=int, default=600, metavar="S",
                   help="seconds the soak scenario runs (default: 600; e.g. 30 for a smoke run)")
    p.add_argument("--attack-duration", type=int, default=60, metavar="S",
                   help="seconds the attack scenario attacks, after its quiet phase (default: 60)")
    p.add_argument("--no-write", action="store_true", help="print only; do not write bench/RESULTS.md")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory (configs, server logs)")
    p.add_argument("--bmrgw", type=Path, metavar="PATH", help="the bmrgw executable (default: the venv's)")
    return p


def _names(known: Sequence[str], what: str) -> Callable[[str], tuple[str, ...]]:
    """An argparse type for a comma-separated list of names, checked up front and kept
    in the canonical order (ratios are computed against direct and nginx, which come first)."""
    def parse(text: str) -> tuple[str, ...]:
        names = {n for n in text.split(",") if n}
        unknown = sorted(names - set(known))
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(unknown) or text!r}; "
                                             f"choose from {', '.join(known)}")
        return tuple(n for n in known if n in names)
    return parse


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Turn SIGTERM into an exception so the ExitStack stops every server."""
    raise KeyboardInterrupt


def _workdir(keep: bool, exits: ExitStack) -> Path:
    if keep:
        path = Path(tempfile.mkdtemp(prefix="bmrgw-bench-"))
        print(f"bench: scratch directory kept at {path}", file=sys.stderr)
        return path
    return Path(exits.enter_context(tempfile.TemporaryDirectory(prefix="bmrgw-bench-")))


def _command(argv: Sequence[str] | None) -> str:
    """How this run was started, as a reader would retype it."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args and "MAKELEVEL" in os.environ:
        return "make bench"
    return shlex.join([".venv/bin/python", "-m", "bench", *args])


def _write(report: str, sections: Sequence[Section]) -> None:
    RESULTS.write_text(report)
    RAW.parent.mkdir(exist_ok=True)
    RAW.write_text(json.dumps({s.name: s.raw for s in sections}, indent=2) + "\n")
    print(f"bench: wrote {RESULTS.relative_to(_HERE.parent)} and {RAW.relative_to(_HERE.parent)}", file=sys.stderr)
