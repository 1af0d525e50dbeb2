"""Safe edits of endpoints.yaml for ``bmrgw endpoints add|set|remove`` (SPEC.md "CLI").

An operator edits the endpoint table while the gateway runs, and the gateway
picks up every change of the file within 2 s, so an edit here must:

* keep what the operator wrote: the ruamel.yaml round-trip document is
  edited in place, so comments, key order, flow style and quoting survive,
  and the comments that follow an entry move with the entry they describe;
* never put an invalid table on disk: the whole new text is validated with
  :func:`routing.config.parse_config`, parsed exactly as the gateway parses it;
* be atomic, so the gateway sees the old file or the new one, never half of
  one: temp file in the same folder, fsync, ``os.replace``, fsync the folder;
* not lose an edit when two operators run the CLI at once: each editor holds
  an ``fcntl`` lock on a sibling lock file for its whole read-modify-write.

:func:`insert_endpoint`, :func:`update_endpoint` and :func:`delete_endpoint`
change a loaded document and touch no file; :func:`edit_file` is the I/O
around them.
"""

from __future__ import annotations

import dataclasses
import fcntl
import io
import itertools
import os
import re
import stat
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError
from ruamel.yaml.scalarstring import ScalarString
from ruamel.yaml.tokens import CommentToken

from gateway.durable import fsync_dir
from gateway.errors import ConfigError, GatewayError, UnknownDestination, UsageError

from . import comments
from .config import NAME_PATTERN, Config, parse_text

__all__ = [
    "Edit",
    "Outcome",
    "Target",
    "delete_endpoint",
    "edit_file",
    "insert_endpoint",
    "lock_path",
    "update_endpoint",
]

#: Seconds an editor waits for another one to finish before giving up.
LOCK_TIMEOUT = 10.0

_LOCK_POLL = 0.05


@dataclass(frozen=True, kw_only=True)
class Target:
    """What an edit sets on one endpoint; ``None`` leaves that field alone."""

    url: str | None = None
    """The business AP's SOAP URL; makes the endpoint a url endpoint."""
    failover: tuple[str, ...] = ()
    """URLs to try after ``url``, in order: with any, the endpoint gets a failover list (``urls:``)."""
    drop_failover: bool = False
    """Whether a single ``url`` may replace a failover list (else that is refused: it would drop URLs)."""
    via: str | None = None
    """The peer gateway that holds the business AP; makes it a via endpoint."""
    timeout: float | None = None
    """Seconds to wait for a url endpoint to answer."""


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """The configuration before and after one edit of the file."""

    before: Config
    """What the file held when the edit started."""
    after: Config
    """What the file holds now."""
    written: bool
    """False when the edit changed nothing, so the file was left alone."""


#: A change of the loaded round-trip document; raises ConfigError to refuse.
Edit = Callable[[CommentedMap], None]


# -- the file ---------------------------------------------------------------------


def edit_file(path: str | Path, edit: Edit) -> Outcome:
    """Apply ``edit`` to the config file at ``path`` and replace the file atomically.

    Raises :class:`ConfigError`, with the file left byte for byte as it was,
    when the file is invalid already or would be invalid after the edit.
    """
    shown = Path(path)
    real = Path(os.path.realpath(shown))  # edit a symlink's target, keep the link
    with _locked(real):
        text = _read(real, shown)
        before = _current(text, real, shown)
        try:
            new_text = _rewrite(text, edit)
            after = _parse(new_text, real)
        except ConfigError as exc:
            raise ConfigError(f"{shown} not changed: {exc.reason}") from exc
        if new_text != text:
            _replace(real, new_text.encode("utf-8"))
    return Outcome(before=before, after=after, written=new_text != text)


def lock_path(path: str | Path) -> Path:
    """The lock file that serialises editors of the config file at ``path``."""
    real = Path(os.path.realpath(path))
    return real.with_name(f".{real.name}.lock")


@contextmanager
def _locked(real: Path) -> Iterator[None]:
    lock = lock_path(real)
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise GatewayError(f"cannot open the lock file {lock}: {exc.strerror or exc}") from exc
    try:
        _acquire(fd, lock, LOCK_TIMEOUT)
        yield
    finally:
        os.close(fd)  # releases the lock


def _acquire(fd: int, lock: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise GatewayError(
                    f"another edit has held {lock} for more than {timeout:g} s; try again"
                ) from None
            time.sleep(_LOCK_POLL)


def _read(real: Path, shown: Path) -> str:
    try:
        return real.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"{shown}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{shown}: not UTF-8 text: {exc}") from exc


def _current(text: str, real: Path, shown: Path) -> Config:
    try:
        return _parse(text, real)
    except ConfigError as exc:
        raise ConfigError(
            f"{shown} is invalid already, so it was not edited: {exc.reason} "
            f"(fix it by hand, then run 'bmrgw endpoints check')"
        ) from exc


def _parse(text: str, real: Path) -> Config:
    """Validate ``text`` exactly as the gateway will read it (messages name the file once, outside)."""
    return dataclasses.replace(parse_text(text), source=real)


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())  # the CLI reports errors on one line


def _replace(real: Path, data: bytes) -> None:
    """Put ``data`` in place of the file ``real`` in one rename, durably."""
    try:
        _swap(real, data)
        fsync_dir(real.parent)  # makes the rename itself durable
    except OSError as exc:
        raise GatewayError(f"cannot write {real}: {exc.strerror or exc}") from exc


def _swap(real: Path, data: bytes) -> None:
    old = real.stat()
    fd, tmp = tempfile.mkstemp(prefix=f".{real.name}.", suffix=".tmp", dir=real.parent)
    try:
        _fill(fd, data, old)
        os.replace(tmp, real)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _fill(fd: int, data: bytes, like: os.stat_result) -> None:
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), stat.S_IMODE(like.st_mode))
        with suppress(PermissionError):  # only root may give the file away
            os.fchown(out.fileno(), like.st_uid, like.st_gid)
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


# -- the round-trip document ------------------------------------------------------


def _rewrite(text: str, edit: Edit) -> str:
    yaml, loaded = _fitting_yaml(text)
    doc = loaded if isinstance(loaded, CommentedMap) else CommentedMap()
    edit(doc)
    dumped = _dump(yaml, doc)
    if loaded is None and text.strip():
        # A file of comments only loads as None and its comments with it: keep them.
        return text.rstrip("\n") + "\n" + dumped
    return dumped


def _fitting_yaml(text: str) -> tuple[YAML, Any]:
    """The round-trip loader whose indentation reproduces ``text`` best, and its document."""
    trials = []
    for mapping, offset in itertools.product((2, 4), (0, 2, 4)):
        yaml = _round_trip(text, mapping=mapping, offset=offset)
        changed = _lines_changed(text, _dump(yaml, _load(yaml, text)))
        if changed == 0:
            break
        trials.append((changed, yaml))
    else:
        yaml = min(trials, key=lambda trial: trial[0])[1]
    # A dump marks the comments it printed, so the edit gets a freshly loaded document.
    return yaml, _load(yaml, text)


def _lines_changed(old: str, new: str) -> int:
    # Indentation changes lines in place, so comparing line by line is enough.
    pairs = itertools.zip_longest(old.splitlines(), new.splitlines())
    return sum(1 for a, b in pairs if a != b)


def _round_trip(text: str, *, mapping: int, offset: int) -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096  # never re-wrap an operator's long lines
    yaml.indent(mapping=mapping, sequence=offset + 2, offset=offset)
    yaml.explicit_start = re.match(r"(?:[ \t]*(?:#.*)?\r?\n)*---(?:\s|$)", text) is not None
    return yaml


def _load(yaml: YAML, text: str) -> Any:
    try:
        return yaml.load(text)
    except YAMLError as exc:
        raise ConfigError(f"not valid YAML: {_one_line(exc)}") from exc


def _dump(yaml: YAML, doc: Any) -> str:
    out = io.StringIO()
    yaml.dump(doc, out)
    return out.getvalue()


# -- the edits --------------------------------------------------------------------


def insert_endpoint(doc: CommentedMap, name: str, target: Target) -> None:
    """Add endpoint ``name`` after the last one; refused if the name is taken or invalid."""
    if not NAME_PATTERN.fullmatch(name):
        raise ConfigError(
            f"{name!r} is not a valid endpoint name "
            "(letters, digits, '.', '_', '-'; starts with a letter or digit; at most 64)"
        )
    if (target.url is None) == (target.via is None):
        raise ConfigError(f"endpoint {name!r} needs exactly one of a url or a via peer")
    table = doc.get("endpoints")
    if isinstance(table, Mapping) and name in table:
        raise ConfigError(f"an endpoint named {name!r} exists already; change it with 'bmrgw endpoints set'")
    entry = _new_entry(target, flow=target.via is not None or _flow_entries(table))
    if isinstance(table, CommentedMap) and table:
        comments.append(table, name, entry)
    else:
        _start_table(doc, name, entry)


def update_endpoint(doc: CommentedMap, name: str, target: Target) -> None:
    """Change the url, via peer or timeout of endpoint ``name``; the rest of it stays."""
    entry = _entry(doc, name)
    if target.url is not None and target.via is not None:
        raise ConfigError(f"endpoint {name!r} takes a url or a via peer, not both")
    if target.url is not None:
        _set_urls(entry, name, [target.url, *target.failover], drop=target.drop_failover)
    if target.via is not None:
        _put(entry, "via", target.via, instead_of="url")
        if "timeout" in entry:  # a via endpoint uses its peer's timeout
            comments.delete(entry, "timeout")
    if target.timeout is not None:
        _put(entry, "timeout", _plain_number(target.timeout))


def _set_urls(entry: CommentedMap, name: str, urls: list[str], *, drop: bool) -> None:
    listed = entry.get("urls")
    if isinstance(listed, list) and len(listed) > 1 and len(urls) == 1 and not drop:
        # One URL over a failover list would silently drop its other URLs.
        raise UsageError(f"{name} fails over between {', '.join(map(str, listed))}: give the whole new list, "
                         "one --url per URL in the order to try them, or add --no-failover to keep only "
                         f"{urls[0]} (nothing written)")
    if len(urls) == 1:
        if "urls" in entry:
            _rename(entry, "urls", "url", urls[0])
        else:
            _put(entry, "url", urls[0], instead_of="via")
        return
    old = next((key for key in ("urls", "url", "via") if key in entry), None)
    if old is None:
        comments.append(entry, "urls", _flow_list(urls))
    else:
        _rename(entry, old, "urls", _flow_list(urls))


def _flow_list(items: list[str]) -> CommentedSeq:
    seq = CommentedSeq(items)
    seq.fa.set_flow_style()
    return seq


def set_disabled(doc: CommentedMap, name: str, disabled: bool) -> None:
    """Take endpoint ``name`` out of service (``disabled: true``) or back in (the key removed)."""
    entry = _entry(doc, name)
    if disabled:
        _put(entry, "disabled", True)
    elif "disabled" in entry:
        comments.delete(entry, "disabled")


def delete_endpoint(doc: CommentedMap, name: str) -> None:
    """Remove endpoint ``name`` with the comment lines directly above it."""
    _entry(doc, name)
    table = doc["endpoints"]
    if list(table)[0] != name:
        comments.delete(table, name)
        return
    _, rest = comments.split(comments.tail(table, name).text())
    comments.drop_comments_above_first(doc)
    comments.delete(table, name)
    if not table:
        comments.leave_empty(doc, rest)


def _entry(doc: CommentedMap, name: str) -> CommentedMap:
    table = doc.get("endpoints")
    if not isinstance(table, CommentedMap) or name not in table:
        known = ", ".join(table) if isinstance(table, CommentedMap) and table else "none"
        raise UnknownDestination(f"no endpoint named {name!r} (endpoints: {known}); nothing written",
                                 destination=name)
    entry = table[name]
    if not isinstance(entry, CommentedMap):
        raise ConfigError(f"endpoints.{name}: must be a mapping")
    return entry


def _new_entry(target: Target, *, flow: bool) -> CommentedMap:
    entry = CommentedMap()
    if target.via is not None:
        entry["via"] = target.via
    elif target.failover:
        entry["urls"] = _flow_list([str(target.url), *target.failover])
    else:
        entry["url"] = target.url
    if target.timeout is not None:
        entry["timeout"] = _plain_number(target.timeout)
    if flow:
        entry.fa.set_flow_style()
    return entry


def _flow_entries(table: Any) -> bool:
    """Whether the table's last entry is written ``{url: …}``, so a new one should be too."""
    if not isinstance(table, CommentedMap) or not table:
        return False
    last = table[comments.last_key(table)]
    return isinstance(last, CommentedMap) and bool(last.fa.flow_style())


def _start_table(doc: CommentedMap, name: str, entry: CommentedMap) -> None:
    """Make ``endpoints`` a block mapping holding ``entry``: it was absent, empty or null."""
    table = CommentedMap()
    table[name] = entry
    if "endpoints" not in doc:
        comments.append(doc, "endpoints", table)
        return
    # After "endpoints: {}" or a null "endpoints:" the slot holds what follows
    # the table; with entries it holds what sits above the first entry.
    slot = comments.Slot(doc.ca.items, "endpoints", 2)
    own, rest = comments.split(slot.text())
    inside, after = _indented_head(rest)
    above_first = _indented_tokens_below(doc)
    doc["endpoints"] = table
    slot.set(own + inside if own.strip() else "")
    if above_first:
        doc.ca.items["endpoints"][3] = above_first
    if after:
        comments.tail(table, name).set("\n" + after)


def _indented_head(lines: str) -> tuple[str, str]:
    """Split ``lines`` after its leading indented comments, which were inside the table."""
    split = 0
    for number, line in enumerate(lines.splitlines(keepends=True)):
        if line.strip() and not (line[0] in " \t" and line.lstrip().startswith("#")):
            break
        if line.strip():
            split = number + 1
    head = "".join(lines.splitlines(keepends=True)[:split])
    return head, lines[len(head):]


def _indented_tokens_below(doc: CommentedMap) -> list[CommentToken]:
    """Take the indented comments that ruamel hung after a null ``endpoints:``.

    They sit above the next top-level key, or at the end of the document.
    """
    keys = list(doc)
    position = keys.index("endpoints")
    if position + 1 < len(keys):
        below = (doc.ca.items.get(keys[position + 1]) or [None, None])[1]
    else:
        below = doc.ca.end
    taken: list[CommentToken] = []
    while below and below[0].column > 0 and str(below[0].value).lstrip().startswith("#"):
        taken.append(below.pop(0))
    return taken


def _put(entry: CommentedMap, key: str, value: Any, *, instead_of: str | None = None) -> None:
    if key in entry:
        entry[key] = _same_quoting(entry[key], value)
    elif instead_of is not None and instead_of in entry:
        _rename(entry, instead_of, key, value)
    else:
        comments.append(entry, key, value)


def _rename(m: CommentedMap, old: str, new: str, value: Any) -> None:
    """Replace key ``old`` by ``new`` at the same place, keeping its comments."""
    position = list(m).index(old)
    comments = m.ca.items.pop(old, None)
    del m[old]
    m.insert(position, new, value)
    if comments is not None:
        m.ca.items[new] = comments


def _same_quoting(old: Any, new: Any) -> Any:
    if isinstance(old, ScalarString) and isinstance(new, str):
        return type(old)(new)
    return new


def _plain_number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


