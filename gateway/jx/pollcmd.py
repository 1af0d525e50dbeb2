"""``bmrgw poll``: one partner from the command line, or every partner of a ``poll.yaml``.

With ``--config poll.yaml`` each partner polls in a thread of its own on its
own schedule (a 1 GiB download for one partner does not hold up the
others); ``--once`` does one round of each and exits 1 if any failed.  The
client stops on SIGTERM, Ctrl-C, and on Windows Ctrl-Break: every step is
safe to break off (atomic writes, idempotent puts), and partners finish the
step they are in.  Nothing here is POSIX-only, so the same command runs as a
systemd service (``deploy/bmrgw-poll.service``) and, on a city hall's
Windows PC, under the Task Scheduler or a service wrapper (README "City hall").
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

from gateway.terminal import http_url

from ..errors import CommandError, PollError, UsageError
from .client import Credentials
from .options import PollOptions
from .poll import Poller, Stopped
from .pollconfig import PollConfig, load_poll_config
from .schedule import Every

__all__ = ["add_poll_command", "run_partners"]

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Seconds partners get to finish their step once asked to stop.
_GRACE = 30.0


def add_poll_command(commands: Any, config_option: Callable[[Any], None]) -> None:
    """Register ``bmrgw poll``."""
    p = commands.add_parser(
        "poll", help="the city hall's JX polling client: fetch documents, upload the outbox",
        description="Poll a gateway's JX server for documents addressed to --receiver-id, write each to "
        "--out (atomically, named after its messageId) and only then confirm it; upload the files placed "
        "in --outbox and move them to OUTBOX/sent/ once the gateway accepted them. Or, with --config "
        "poll.yaml, do so for every partner the file names, each on its own schedule with its hooks. "
        "Runs until stopped (Ctrl-C, SIGTERM), or one round with --once.",
    )
    p.add_argument("--config", type=Path, metavar="POLL.YAML",
                   help="poll every partner of this file (instead of --server, --receiver-id, --out …)")
    p.add_argument("--server", type=http_url, metavar="URL", help="the gateway's JX URL, e.g. http://gw:8080/jx")
    p.add_argument("--receiver-id", metavar="ID", help="our JX id (documents for it are fetched)")
    p.add_argument("--out", type=Path, metavar="DIR", help="where received documents go")
    p.add_argument("--outbox", type=Path, metavar="DIR", help="files placed here are uploaded")
    p.add_argument("--sender-id", metavar="ID", help="our JX id as a sender (default: --receiver-id)")
    p.add_argument("--send-to", default="DC", metavar="ID", help="receiver id of uploaded files (default: DC)")
    p.add_argument("--format-type", default="FILE", metavar="T", help="formatType of uploads (default: FILE)")
    p.add_argument("--interval", type=_seconds, default=30.0, metavar="SECONDS",
                   help="seconds between polls, ±20%% jitter (default: 30)")
    p.add_argument("--once", action="store_true",
                   help="one round (drain, upload), then exit: 0 if nothing failed, 1 if anything did")
    p.add_argument("--state", type=Path, metavar="DIR", help="received-id records (default: OUT/.bmrgw-poll)")
    p.add_argument("--user", help="HTTP Basic user")
    p.add_argument("--password", help="HTTP Basic password (default: $BMRGW_PASSWORD)")
    p.add_argument("--cert", type=Path, metavar="PEM", help="client certificate (mutual TLS)")
    p.add_argument("--key", type=Path, metavar="PEM", help="its private key")
    p.add_argument("--ca", type=Path, metavar="PEM", help="CA certificate that signed the gateway's certificate")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(run=_poll)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.05 <= value <= 86400:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds between 0.05 and 86400")
    return value


_SINGLE = ("server", "receiver_id", "out", "outbox", "sender_id", "state", "user", "password", "cert", "key", "ca")


def _poll(args: Any) -> int:
    if args.config is not None:
        given = [f"--{name.replace('_', '-')}" for name in _SINGLE if getattr(args, name) is not None]
        if given:
            raise UsageError(f"--config names the partners; {', '.join(given)} cannot be given with it")
        config = load_poll_config(args.config)
        _logging(args.log_level, config.log_file)
        return run_partners(config, once=args.once)
    missing = [f"--{name.replace('_', '-')}" for name in ("server", "receiver_id", "out") if getattr(args, name) is None]
    if missing:
        raise UsageError(f"give --config POLL.YAML, or {', '.join(missing)} for one partner")
    if args.outbox is not None and args.outbox.resolve() == args.out.resolve():
        raise PollError("--outbox and --out must be different folders")
    _logging(args.log_level, None)
    options = PollOptions(
        server=args.server, receiver_id=args.receiver_id, out=args.out, outbox=args.outbox,
        sender_id=args.sender_id, send_to=args.send_to, format_type=args.format_type,
        schedule=Every(seconds=args.interval), once=args.once, state=args.state, credentials=Credentials(
            user=args.user, password=args.password if args.password is not None else os.environ.get("BMRGW_PASSWORD"),
            cert=args.cert, key=args.key, ca=args.ca),
    )
    _on_stop(_raise_stopped)
    return Poller(options).run()


def _logging(level: str, log_file: Path | None) -> None:
    handler: logging.Handler
    if log_file is None:
        handler = logging.StreamHandler()
    else:
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            handler = logging.handlers.RotatingFileHandler(log_file, maxBytes=10 * 1024 * 1024, backupCount=5,
                                                           encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"cannot write the log file {log_file}: {exc.strerror or exc}") from exc
    handler.setFormatter(logging.Formatter(_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)


def _raise_stopped(signum: int, frame: FrameType | None) -> None:
    raise Stopped


def _on_stop(handler: Callable[[int, FrameType | None], None]) -> None:
    """SIGTERM and Ctrl-C everywhere; Ctrl-Break (SIGBREAK) where Windows has it."""
    for name in ("SIGTERM", "SIGINT", "SIGBREAK"):
        number = getattr(signal, name, None)
        if number is not None:
            signal.signal(number, handler)


def run_partners(config: PollConfig, *, once: bool) -> int:
    """Every partner in a thread of its own until stopped; with ``once`` one round each: 0, or 1 if any failed."""
    stop = threading.Event()
    pollers = [Poller(_once(partner) if once else partner, stop=stop) for partner in config.partners]
    results: dict[str, int | BaseException] = {}
    threads = [threading.Thread(target=_run_one, args=(poller, results), name=f"poll-{poller.options.name}",
                                daemon=True) for poller in pollers]
    _on_stop(lambda signum, frame: stop.set())
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads) and not stop.is_set():
        stop.wait(0.5)
    for thread in threads:
        thread.join(_GRACE)
    return _outcome(results, [p.options.name for p in pollers], stopped=stop.is_set() and not once)


def _once(partner: PollOptions) -> PollOptions:
    return replace(partner, once=True)


def _run_one(poller: Poller, results: dict[str, int | BaseException]) -> None:
    try:
        results[poller.options.name] = poller.run()
    except CommandError as exc:  # a fatal failure ends this partner only; the others go on
        poller.log.error("%s", exc.reason)
        results[poller.options.name] = exc
    except Exception as exc:  # a bug must still end as one line in the log, and count as a failure
        poller.log.error("stopped by an unexpected error: %s: %s", type(exc).__name__, exc)
        results[poller.options.name] = exc


def _outcome(results: dict[str, int | BaseException], names: list[str], *, stopped: bool) -> int:
    failed = [name for name in names if results.get(name, 0) != 0]
    unfinished = [name for name in names if name not in results]
    if unfinished and not stopped:
        logging.getLogger("bmrgw.poll").error("partners still running after %g s: %s", _GRACE, ", ".join(unfinished))
    if failed:
        raise PollError(f"{len(failed)} of {len(names)} partner(s) failed: {', '.join(failed)}")
    return 0
