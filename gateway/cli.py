"""The ``bmrgw`` command: one entry point, a sub-command per job (SPEC.md "CLI").

Exit codes: 0 success, 1 the job failed, 2 bad usage, an invalid or missing
configuration, or a listen address that cannot be taken, 130 interrupted,
141 the reader of the output went away (``| head``).
Errors are one line on stderr, never a traceback: the gateway's own errors
(:mod:`gateway.errors`) carry their message, and an ``OSError`` that reaches
:func:`main` (a folder that cannot be made, a file that cannot be written) is
told by its reason and path.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.terminal import add_db_option, db_url, port_number

from .errors import CommandError, ConfigError, ConfigUnreadable, GatewayError

__all__ = ["main", "build_parser"]

DEFAULT_CONFIG = "endpoints.yaml"


#: The sub-commands other packages add, in the order ``--help`` lists them: name, the module and
#: function that register it (with ``--config`` or not), and its help line.  Only the module of the
#: command being run is imported, so ``bmrgw --help`` does not load aiohttp, SQLAlchemy and lxml
#: (1.1 s before); tests/test_cli_walk.py checks each line against what its module registers.
COMMANDS: tuple[tuple[str, str, str, bool, str], ...] = (
    ("init", "gateway.serve.init", "add_init_command", False,
     "write a commented config, the log and master keys and a data folder for a new gateway"),
    ("status", "gateway.serve.status", "add_status_command", True,
     "ask the running gateway how it is: endpoints and circuits, NTP, log writer, workers"),
    ("endpoints", "routing.commands", "add_endpoints_command", True,
     "read and edit the endpoint table (business-AP name -> URL or peer)"),
    ("logs", "gateway.logs.commands", "add_logs_command", True, "show, verify and archive the send/receive logs"),
    ("time", "gateway.logs.commands", "add_time_command", True,
     "query the NTP servers once and show offset, delay and stratum"),
    ("refdb", "refdb.commands", "add_refdb_command", True, "push data to the reference DB, or query it"),
    ("jx", "gateway.jx.commands", "add_jx_command", True,
     "inspect and manage the JX mailboxes (documents waiting to be polled)"),
    ("poll", "gateway.jx.pollcmd", "add_poll_command", True,
     "the city hall's JX polling client: fetch documents, upload the outbox"),
    ("send", "attachments.transfer.commands", "add_file_commands", True,
     "send a file to a business AP through the gateway, in verified parts"),
    ("receive", "attachments.transfer.commands", "add_file_commands", True,
     "run a receiving business AP that stores files sent with 'bmrgw send'"),
    ("charset", "gateway.charset.commands", "add_charset_command", True,
     "list the characters of a file that an endpoint's character profile cannot carry"),
    ("keys", "gateway.crypto.commands", "add_keys_command", True,
     "the master key and the organisations' data keys (encryption at rest)"),
    ("check", "gateway.check.commands", "add_check_command", False,
     "connection test (接続試験) from a site against its gateway: a checklist and a report"),
    ("pki", "gateway.security.pki", "add_pki_command", False,
     "make a development CA and server, client and signing certificates"),
    ("wss", "gateway.security.message", "add_wss_command", False,
     "sign or verify one SOAP message with WS-Security (for trying and checking by hand)"),
    ("completion", "gateway.completion", "add_completion_command", False,
     "print a bash or zsh completion script for bmrgw"),
)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(only=next((word for word in argv if not word.startswith("-")), ""))
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except ConfigUnreadable as exc:
        return _fail(exc.reason, 2)
    except ConfigError as exc:
        return _fail(f"invalid configuration: {exc.reason}", 2)
    except CommandError as exc:
        return _fail(exc.reason, exc.exit_code)
    except GatewayError as exc:
        return _fail(exc.reason, 1)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader of our output went away (`bmrgw logs | head`): stop quietly, as other tools do.
        # stdout is pointed at /dev/null so that flushing it at exit does not fail once more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a command killed by it
    except OSError as exc:
        return _fail(_os_reason(exc), 1)


def _fail(message: str, code: int) -> int:
    print(f"bmrgw: {message}", file=sys.stderr)
    return code


def _os_reason(exc: OSError) -> str:
    """``cannot write /proc/nope: No such file or directory`` from an OSError, without its errno prefix."""
    reason = exc.strerror or str(exc)
    if exc.filename is None:
        return reason
    other = f" -> {exc.filename2}" if exc.filename2 is not None else ""
    return f"{exc.filename}{other}: {reason}"


def build_parser(*, only: str | None = None) -> argparse.ArgumentParser:
    """The ``bmrgw`` parser: every sub-command in full, or (``only``) that one in full and the others by name."""
    parser = argparse.ArgumentParser(
        prog="bmrgw",
        description="SOAP integration gateway for local-government clouds: routes SOAP messages "
        "by business-AP name (BMR-GW) and relays them to the endpoints of endpoints.yaml.",
        epilog="Run 'bmrgw COMMAND --help' for the options of one command.",
    )
    parser.add_argument("--version", action=_Version)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_serve(commands)
    registered: set[tuple[str, str]] = set()
    for name, module, function, configured, help_line in COMMANDS:
        if (module, function) in registered:
            continue  # one function added this command with an earlier one (send and receive)
        if only is None or only in _names_of(module, function):
            registered.add((module, function))
            register = getattr(importlib.import_module(module), function)
            register(commands, config_option) if configured else register(commands)
        else:
            commands.add_parser(name, help=help_line, add_help=False)  # listed; never run under this name
    _add_demo_backend(commands)
    _add_hash_password(commands)
    return parser


def _names_of(module: str, function: str) -> set[str]:
    return {name for name, m, f, _, _ in COMMANDS if (m, f) == (module, function)}


class _Version(argparse.Action):
    """``--version``: the installed package's version, read only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **_: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="show bmrgw's version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        from gateway import version

        print(f"bmrgw {version()}")
        parser.exit()


def config_option(parser: argparse.ArgumentParser) -> None:
    """The ``--config`` option every command shares."""
    parser.add_argument(
        "--config", type=Path, default=Path(DEFAULT_CONFIG), metavar="PATH",
        help=f"the endpoint table and gateway settings (default: ./{DEFAULT_CONFIG})",
    )


def _add_serve(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "serve", help="run the gateway",
        description="Run the gateway: relay SOAP messages on /soap and /soap/{ap}, serve /healthz "
        "and /metrics, and apply edits of the config file within 2 s without a restart. "
        "SIGHUP reloads the config at once (an invalid file keeps the old table); SIGTERM stops "
        "accepting, lets requests in flight finish (gateway.drain_timeout, default 30 s), flushes "
        "the send/receive log and exits 0.",
    )
    config_option(p)
    p.add_argument("--host", help="listen address (default: gateway.listen.host, else 127.0.0.1)")
    p.add_argument("--port", type=port_number, help="listen port (default: gateway.listen.port, else 8080)")
    p.add_argument("--data-dir", type=Path, metavar="DIR", help="local files (default: gateway.data_dir, else ./var)")
    add_db_option(p)
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="run N gateway processes on the same port (SO_REUSEPORT), sharing the store; "
                   "a worker that dies is started again; SIGTERM drains all, SIGHUP reloads all (default: 1)")
    p.add_argument("--node", metavar="NAME",
                   help="this host's name in the send/receive log, when several hosts with the same "
                   "gateway.name share one store (default: gateway.name; workers add .w1, .w2, ...)")
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # set by the supervisor in its workers
    p.add_argument("--heartbeat-fd", type=int, help=argparse.SUPPRESS)  # likewise: the watchdog's pipe
    p.set_defaults(run=_serve)


def _serve(args: argparse.Namespace) -> int:
    from gateway.serve.options import ServeOptions
    from gateway.serve.server import serve

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = ServeOptions(
        config=args.config, host=args.host, port=args.port, data_dir=args.data_dir,
        db=db_url(args),
        workers=max(1, args.workers), worker=args.worker, log_level=args.log_level, node=args.node,
        heartbeat=args.heartbeat_fd,
    )
    return serve(options)


def _add_demo_backend(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "demo-backend", help="run the demo business AP (a WSDL-described SOAP service)",
        description="Run the demo business AP of schemas/demo.wsdl (Echo, Add, Fail over SOAP 1.1 "
        "and 1.2) so the gateway can be tried end to end; its WSDL is at http://HOST:PORT/demo?wsdl.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=port_number, default=9001)
    p.add_argument("--name", default="demo", help="service name returned by Echo (default: demo)")
    p.add_argument("--delay", type=float, default=0.0, metavar="SECONDS", help="wait before each answer")
    p.set_defaults(run=_demo_backend)


def _demo_backend(args: argparse.Namespace) -> int:
    from aiohttp import web

    from gateway.serve.demo import make_demo_app
    from gateway.serve.server import install_event_loop, listen_socket

    sock = listen_socket(args.host, args.port, reuse_port=False)  # taken before it is announced
    install_event_loop()
    print(f"demo business AP on http://{args.host}:{sock.getsockname()[1]}/demo (WSDL: ?wsdl)", flush=True)
    web.run_app(make_demo_app(name=args.name, delay=args.delay), sock=sock, access_log=None, print=None)
    return 0


def _add_hash_password(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "hash-password", help="print a password hash for clients.*.basic.password_hash",
        description="Read a password (prompted twice on a terminal, else the first line of stdin) and "
        "print its salted scrypt hash for clients.NAME.basic.password_hash in endpoints.yaml. "
        "The password itself is never written anywhere.",
    )
    p.set_defaults(run=_hash_password)


def _hash_password(_: argparse.Namespace) -> int:
    import getpass

    from gateway.security.passwords import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("bmrgw: the two passwords differ; nothing printed", file=sys.stderr)
            return 2
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("bmrgw: empty password refused", file=sys.stderr)
        return 2
    print(hash_password(password))
    return 0


if __name__ == "__main__":
    sys.exit(main())
