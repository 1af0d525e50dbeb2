"""``poll.yaml``: the partners one ``bmrgw poll --config`` polls (issue 21, item 4).

::

    log_file: logs/poll.log          # optional; rotated at 10 MB, 5 kept (else stderr)
    partners:
      dc-tokyo:                      # a name for the log and the summary
        server: https://dc-gw.example.lg.jp/jx
        receiver_id: "1310001"       # quoted: ids are text
        sender_id: "1310001"         # default: receiver_id
        send_to: DC                  # receiver id of uploads (default DC)
        out: in/dc-tokyo             # relative paths are relative to this file
        outbox: out/dc-tokyo
        user: cityhall-a
        password_file: secret/dc-tokyo.txt   # or password_env: NAME, or password: …
        ca: certs/dc-ca.pem
        schedule: {every: 5m}        # or {cron: "0 8-18 * * mon-fri"} (6 fields: seconds first)
        before: [C:\\jx\\export.bat, --all]   # program and fixed arguments; the files follow
        after: [python, handle.py]
        hook_timeout: 10m
        compression: gzip            # uploads: gzip, zip or none
        names: documentType          # received files named by documentType (default messageId)
        namespace: hyphenless        # a server built from a WSDL copy without the hyphen (default published)

Parsed into frozen :class:`~gateway.jx.options.PollOptions`; every error
names the key it is about (``partners.dc-tokyo.schedule.every: …``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from routing import fields as read
from routing.settings import duration

from ..errors import ConfigError, ConfigUnreadable
from ..ns import JX, JX_HYPHENLESS
from .client import Credentials
from .hooks import Hook
from .options import NAME_SOURCES, PollOptions
from .schedule import Every, Schedule, parse_cron

__all__ = ["PollConfig", "load_poll_config", "parse_poll_config"]

_NAMESPACES = {"published": JX, "hyphenless": JX_HYPHENLESS}

_PARTNER_KEYS = {"server", "receiver_id", "sender_id", "send_to", "format_type", "out", "outbox", "state",
                 "user", "password", "password_env", "password_file", "cert", "key", "ca", "timeout",
                 "schedule", "before", "after", "hook_timeout", "compression", "decompress",
                 "max_document_bytes", "names", "namespace"}


@dataclass(frozen=True, kw_only=True)
class PollConfig:
    """A whole ``poll.yaml``."""

    partners: tuple[PollOptions, ...]
    """Every partner, in the file's order."""
    log_file: Path | None = None
    """Where the log goes (rotated); None: standard error, for a service manager's journal."""


def load_poll_config(path: Path) -> PollConfig:
    """Read and validate ``path``."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # Notepad may have written a BOM
    except OSError as exc:
        raise ConfigUnreadable(f"cannot read the poll config {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc.reason} at byte {exc.start}") from exc
    try:
        data = YAML(typ="safe", pure=True).load(text)
    except YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from exc
    try:
        return parse_poll_config(data, base=path.resolve().parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc.reason}") from exc


def parse_poll_config(data: Any, *, base: Path) -> PollConfig:
    """Validate a YAML document; relative paths are relative to ``base``."""
    root = read.mapping(data if data is not None else {}, "(top level)")
    read.known(root, "(top level)", {"partners", "log_file"})
    partners = read.mapping(root.get("partners"), "partners")
    if not partners:
        raise ConfigError("partners: name at least one partner")
    parsed = tuple(_partner(str(name), read.mapping(value, f"partners.{name}"), base)
                   for name, value in partners.items())
    _distinct_folders(parsed)
    log_file = root.get("log_file")
    return PollConfig(partners=parsed, log_file=None if log_file is None else _path(log_file, "log_file", base))


def _partner(name: str, m: Mapping[str, Any], base: Path) -> PollOptions:
    at = f"partners.{name}"
    read.known(m, at, _PARTNER_KEYS)
    for key in ("server", "receiver_id", "out"):
        if key not in m:
            raise ConfigError(f"{at}.{key}: required")
    hook_timeout = duration(m["hook_timeout"], f"{at}.hook_timeout") if "hook_timeout" in m else 300.0
    names = m.get("names", "messageId")
    if names not in NAME_SOURCES:
        raise ConfigError(f"{at}.names: must be messageId or documentType, not {names!r}")
    decompress = m.get("decompress", True)
    if not isinstance(decompress, bool):
        raise ConfigError(f"{at}.decompress: must be true or false, not {decompress!r}")
    return PollOptions(
        name=read.name(name, at), server=read.url(m["server"], f"{at}.server"),
        receiver_id=_id(m["receiver_id"], f"{at}.receiver_id"),
        sender_id=_id(m["sender_id"], f"{at}.sender_id") if "sender_id" in m else None,
        send_to=_id(m.get("send_to", "DC"), f"{at}.send_to"),
        format_type=read.string(m.get("format_type", "FILE"), f"{at}.format_type"),
        out=_path(m["out"], f"{at}.out", base),
        outbox=_path(m["outbox"], f"{at}.outbox", base) if "outbox" in m else None,
        state=_path(m["state"], f"{at}.state", base) if "state" in m else None,
        timeout=duration(m["timeout"], f"{at}.timeout") if "timeout" in m else 300.0,
        credentials=_credentials(m, at, base), schedule=_schedule(m.get("schedule"), f"{at}.schedule"),
        before=_hook(m.get("before"), f"{at}.before", hook_timeout),
        after=_hook(m.get("after"), f"{at}.after", hook_timeout),
        compression=_compression(m.get("compression", "none"), f"{at}.compression"), decompress=decompress,
        max_document_bytes=read.integer(m.get("max_document_bytes", PollOptions.max_document_bytes),
                                        f"{at}.max_document_bytes", low=1024),
        names=names, namespace=_namespace(m.get("namespace", "published"), f"{at}.namespace"),
    )


def _namespace(value: Any, path: str) -> str:
    if value not in _NAMESPACES:
        raise ConfigError(f"{path}: must be published ({JX}) or hyphenless ({JX_HYPHENLESS}), not {value!r}")
    return _NAMESPACES[value]


def _id(value: Any, path: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        raise ConfigError(f"{path}: write the id in quotes ({path.rpartition('.')[2]}: \"{value}\"): "
                          "YAML reads 0131 as the number 131")
    text = read.string(value, path)
    if not text or any(ch.isspace() for ch in text) or not text.isprintable():
        raise ConfigError(f"{path}: {text!r} is not a JX id (printable, no blanks)")
    return text


def _path(value: Any, path: str, base: Path) -> Path:
    text = read.string(value, path)
    if not text:
        raise ConfigError(f"{path}: empty path")
    given = Path(os.path.expandvars(os.path.expanduser(text)))
    return given if given.is_absolute() else base / given


def _credentials(m: Mapping[str, Any], at: str, base: Path) -> Credentials:
    given = [key for key in ("password", "password_env", "password_file") if key in m]
    if len(given) > 1:
        raise ConfigError(f"{at}: give one of password, password_env and password_file, not {' and '.join(given)}")
    password = None
    if "password" in m:
        password = read.string(m["password"], f"{at}.password")
    elif "password_env" in m:
        variable = read.string(m["password_env"], f"{at}.password_env")
        password = os.environ.get(variable)
        if password is None:
            raise ConfigError(f"{at}.password_env: the environment variable {variable} is not set")
    elif "password_file" in m:
        file = _path(m["password_file"], f"{at}.password_file", base)
        try:
            password = file.read_text(encoding="utf-8-sig").strip()
        except OSError as exc:
            raise ConfigError(f"{at}.password_file: cannot read {file}: {exc.strerror or exc}") from exc
    if password is not None and "user" not in m:
        raise ConfigError(f"{at}: a password needs its user")
    files = {key: _path(m[key], f"{at}.{key}", base) for key in ("cert", "key", "ca") if key in m}
    return Credentials(user=read.string(m["user"], f"{at}.user") if "user" in m else None, password=password,
                       cert=files.get("cert"), key=files.get("key"), ca=files.get("ca"))


def _schedule(raw: Any, path: str) -> Schedule:
    if raw is None:
        return Every(seconds=30.0)
    m = read.mapping(raw, path)
    read.known(m, path, {"every", "cron", "jitter"})
    if ("every" in m) == ("cron" in m):
        raise ConfigError(f"{path}: give either every (like 5m) or cron (like \"0 8-18 * * mon-fri\")")
    if "cron" in m:
        if "jitter" in m:
            raise ConfigError(f"{path}.jitter: only an every schedule has a jitter")
        return parse_cron(read.string(m["cron"], f"{path}.cron"), f"{path}.cron")
    seconds = duration(m["every"], f"{path}.every")
    if not 0.05 <= seconds <= 7 * 86400:
        raise ConfigError(f"{path}.every: between 0.05 s and a week, not {m['every']!r}")
    jitter = read.number(m.get("jitter", 0.2), f"{path}.jitter", low=0, high=0.5)
    return Every(seconds=seconds, jitter=jitter)


def _hook(raw: Any, path: str, timeout: float) -> Hook | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        raise ConfigError(f"{path}: write the command as a list, [program, argument, …] (it runs without a "
                          "shell, so nothing in it or in a file name is interpreted)")
    if not isinstance(raw, list) or not raw or not all(isinstance(a, str) and a for a in raw):
        raise ConfigError(f"{path}: must be a list of strings, [program, argument, …]")
    return Hook(argv=tuple(raw), timeout=timeout)


def _compression(value: Any, path: str) -> str:
    word = "none" if value is None or value is False else value
    if word not in ("none", "gzip", "zip"):
        raise ConfigError(f"{path}: must be gzip, zip or none, not {value!r}")
    return "" if word == "none" else str(word)


def _distinct_folders(partners: tuple[PollOptions, ...]) -> None:
    """Two partners writing one folder would mix their documents and their received-id records."""
    seen: dict[Path, str] = {}
    for partner in partners:
        for role, folder in (("out", partner.out), ("outbox", partner.outbox)):
            if folder is None:
                continue
            key = Path(os.path.normcase(os.path.abspath(folder)))
            if key in seen:
                raise ConfigError(f"partners.{partner.name}.{role}: {folder} is also {seen[key]}; "
                                  "each partner needs folders of its own")
            seen[key] = f"partners.{partner.name}.{role}"
