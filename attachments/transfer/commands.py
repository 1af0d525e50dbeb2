"""The file-transfer commands: ``bmrgw send`` and ``bmrgw receive`` (SPEC.md "CLI", capability D)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import TypeAlias

from gateway.crypto import Vault, vault_for
from gateway.errors import ConfigError, SendError
from gateway.ns import SoapVersion
from gateway.store import Store, database_url
from gateway.terminal import ConfigOption, http_url, port_number
from routing.config import load_config

from .charset import add_charset_options, file_charset, summary
from .receiver import ReceiveOptions, make_receiver_app
from .sender import EXIT_CODES, SendOptions, describe, send_file

__all__ = ["add_file_commands"]

Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _size(text: str) -> int:
    """A byte count with an optional K/M/G suffix (powers of 1024)."""
    units = {"k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}
    number, unit = (text[:-1], units.get(text[-1].lower())) if text[-1:].isalpha() else (text, 1)
    if unit is None or not number.isdigit() or int(number) * unit < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive byte count (e.g. 67108864, 64M, 1G)")
    return int(number) * unit


def _size_or_zero(text: str) -> int:
    return 0 if text.strip() == "0" else _size(text)


def add_file_commands(commands: Commands, config_option: ConfigOption) -> None:
    """Register ``send`` and ``receive``."""
    _add_send(commands, config_option)
    _add_receive(commands, config_option)


def _add_send(commands: Commands, config_option: ConfigOption) -> None:
    codes = "; ".join(f"{code} {meaning}" for code, meaning in EXIT_CODES.items())
    p = commands.add_parser(
        "send", help="send a file to a business AP through the gateway, in verified parts",
        description="Send FILE to the business AP named by --to through the gateway: as SOAP "
        "attachments (SwA, or MTOM with --mtom), optionally zipped, in parts with SHA-256 checksums. "
        "Running the same command again after an interruption resumes: parts the receiver already "
        "has are skipped. A progress bar (bytes, rate, ETA) is shown when stderr is a terminal. "
        "With --charset (or --charset-of) a UTF-8 CSV or fixed-length file is converted to the partner's "
        "encoding first, into a private temp file deleted at exit.",
        epilog=f"Exit codes: {codes}.")
    config_option(p)
    p.add_argument("file", type=Path, metavar="FILE")
    p.add_argument("--to", required=True, metavar="AP", help="destination business-AP name (e.g. a 'bmrgw receive')")
    p.add_argument("--gateway", required=True, type=http_url, metavar="URL", help="the gateway, e.g. http://127.0.0.1:8080/soap")
    p.add_argument("--zip", action="store_true", help="compress the file (one-member zip, deflate) before sending")
    p.add_argument("--part-size", type=_size, default=64 * 1024 ** 2, metavar="BYTES",
                   help="bytes per part (suffix K, M, G allowed; default 64M); must be the same to resume")
    p.add_argument("--mtom", action="store_true", help="MTOM/XOP instead of SwA (WS-I Attachments Profile)")
    p.add_argument("--soap12", action="store_true", help="SOAP 1.2 instead of SOAP 1.1")
    p.add_argument("--from", dest="sender", metavar="AP", help="our business-AP name (routing header r:From)")
    p.add_argument("--user", help="HTTP Basic user for the gateway")
    p.add_argument("--password", help="HTTP Basic password (default: $BMRGW_PASSWORD)")
    p.add_argument("--ca", type=Path, metavar="PEM", help="CA certificate(s) to trust for an https gateway")
    p.add_argument("--cert", type=Path, metavar="PEM", help="client certificate for mutual TLS")
    p.add_argument("--key", type=Path, metavar="PEM", help="key of the client certificate")
    p.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                   help="longest wait for one answer (default 600)")
    add_charset_options(p, sending=True)
    p.set_defaults(run=_send)


def _send(args: argparse.Namespace) -> int:
    options = SendOptions(
        path=args.file, to=args.to, gateway=args.gateway, zip=args.zip, part_size=args.part_size, mtom=args.mtom,
        version=SoapVersion.V12 if args.soap12 else SoapVersion.V11, sender=args.sender, user=args.user,
        password=args.password or os.environ.get("BMRGW_PASSWORD"), ca=args.ca, cert=args.cert, key=args.key,
        timeout=args.timeout, charset=file_charset(args))
    try:
        result = asyncio.run(send_file(options))
    except SendError as exc:
        print(f"bmrgw send: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("bmrgw send: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    if result.losses is not None and result.losses.total:
        print(f"bmrgw send: {result.losses.total} character(s) substituted converting {options.path.name}: "
              f"{summary(result.losses)}", file=sys.stderr)
    print(describe(result, options))
    return 0


def _add_receive(commands: Commands, config_option: ConfigOption) -> None:
    p = commands.add_parser(
        "receive", help="run a receiving business AP that stores files sent with 'bmrgw send'",
        description="Run a business AP that receives files (urn:bmrgw:file:1 PutFilePart, SwA or MTOM, "
        "SOAP 1.1 or 1.2) on any path of http://HOST:PORT/ (WSDL: GET ?wsdl). Parts are verified "
        "(size, SHA-256) and kept under DIR/.bmrgw-partial; a file appears in DIR only when complete "
        "and verified (unzipped when it was sent with --zip), converted to UTF-8 with --charset. Re-sent "
        "parts are answered as duplicates.")
    config_option(p)
    p.add_argument("--port", type=port_number, required=True)
    p.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    p.add_argument("--dir", type=Path, required=True, metavar="DIR", help="where complete files are published")
    p.add_argument("--ap", metavar="NAME", help="this business-AP's name: with gateway.encryption in --config, "
                   "staged parts are sealed under its data key (keys in that config's gateway.db)")
    p.add_argument("--max-file-bytes", type=_size, default=ReceiveOptions.max_file_bytes, metavar="BYTES",
                   help="largest file accepted, as declared before its first part is staged (default 64G)")
    p.add_argument("--max-parts", type=int, default=ReceiveOptions.max_parts, metavar="N",
                   help="most parts a transfer may be declared in (default 10000); refused before anything is staged")
    p.add_argument("--min-free-bytes", type=_size_or_zero, default=ReceiveOptions.min_free_bytes, metavar="BYTES",
                   help="free space DIR's disk keeps: a transfer or part that would leave less is refused with "
                   "503 InsufficientStorage (default 1G; 0: no check)")
    p.add_argument("--max-ratio", type=float, default=ReceiveOptions.max_ratio, metavar="R",
                   help="zip bombs: largest inflated/compressed ratio (default 200)")
    p.add_argument("--keep-partial-days", type=float, default=ReceiveOptions.keep_partial_days, metavar="DAYS",
                   help="forget transfers untouched this long: unfinished parts, and the record of finished "
                   "ones (default 7)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    add_charset_options(p, sending=False)
    p.set_defaults(run=_receive)


def _vault(args: argparse.Namespace) -> Vault | None:
    """The sealing vault of ``gateway.encryption`` in --config (when that file exists), keys in its gateway.db."""
    if not args.config.exists():
        return None
    config = load_config(args.config)
    if config.gateway.encryption is None:
        return None
    if not args.ap:
        raise ConfigError("gateway.encryption is set: bmrgw receive needs --ap NAME, the organisation "
                          "whose data key seals the staged parts")
    return vault_for(config.gateway.encryption, Store(database_url(config)).engine)


def _receive(args: argparse.Namespace) -> int:
    from aiohttp import web

    from gateway.serve.server import install_event_loop, listen_socket

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = ReceiveOptions(directory=args.dir, max_file_bytes=args.max_file_bytes, max_ratio=args.max_ratio,
                             keep_partial_days=args.keep_partial_days, max_parts=args.max_parts,
                             min_free_bytes=args.min_free_bytes, vault=_vault(args), org=args.ap or "",
                             charset=file_charset(args))
    try:
        app = make_receiver_app(options)
    except OSError as exc:
        print(f"bmrgw receive: cannot use {args.dir}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    sock = listen_socket(args.host, args.port, reuse_port=False)  # taken before saying where files come from
    install_event_loop()
    port = sock.getsockname()[1]
    print(f"bmrgw receive: files into {args.dir} from http://{args.host}:{port}/ (WSDL: ?wsdl)", flush=True)
    web.run_app(app, sock=sock, access_log=None, print=None, shutdown_timeout=30)
    return 0
