"""Keeping endpoints.yaml's comments with what they describe when ``bmrgw endpoints`` edits it.

ruamel.yaml keeps a comment as the *tail* of the entry above it, so adding,
deleting or renaming an entry would move comments onto its neighbours; these
helpers move each comment with the entry it belongs to.

ruamel.yaml hangs the blank and comment lines that follow an entry on the
"tail" slot of the entry's last scalar (ca.items[key][2] in a mapping, [0]
in a sequence).  The first line of that text ends the entry's own line (an
end of line comment, or just the newline); the lines after it describe what
comes next.  So when the last entry changes, those lines move to the new
last entry, and a removed entry takes the comment block directly above it
(the end of the previous entry's tail) but leaves the lines below it.  The
lines between "endpoints:" and the first entry live in the slots of the
"endpoints" key itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import CommentMark
from ruamel.yaml.tokens import CommentToken

__all__ = ["Slot", "tail", "last_key", "split", "joined", "append", "delete", "above", "leave_empty",
           "drop_comments_above_first", "lone_comment"]


@dataclass(frozen=True)
class Slot:
    """One comment position of ruamel's comment attribute: ``items[key][index]``."""

    items: dict[Any, list[Any]]
    key: Any
    index: int

    def text(self) -> str:
        token = (self.items.get(self.key) or [None] * 4)[self.index]
        return str(token.value) if token is not None else ""

    def set(self, text: str) -> None:
        entry = self.items.setdefault(self.key, [None, None, None, None])
        token = entry[self.index]
        if not text or text == "\n":
            entry[self.index] = None
        elif token is None:
            entry[self.index] = CommentToken(text, CommentMark(0), None)
        else:
            token.value = text  # keeps the column of an end of line comment


def tail(node: CommentedMap | CommentedSeq, key: Any) -> Slot:
    """The slot holding the lines that follow entry ``key`` of a block collection."""
    value = node[key]
    if isinstance(value, (CommentedMap, CommentedSeq)) and value and not value.fa.flow_style():
        return tail(value, last_key(value))
    return Slot(node.ca.items, key, 0 if isinstance(node, CommentedSeq) else 2)


def last_key(node: CommentedMap | CommentedSeq) -> Any:
    return len(node) - 1 if isinstance(node, CommentedSeq) else list(node)[-1]


def split(tail: str) -> tuple[str, str]:
    """A tail's own line ending (with its end of line comment) and the lines after it."""
    if not tail:
        return "\n", ""
    end = tail.find("\n") + 1 or len(tail)
    return tail[:end], tail[end:]


def joined(above: str, below: str) -> str:
    """The lines around a removed entry: ``above`` less the comment block that
    described the entry and the blank lines over it, then ``below``."""
    kept = above.splitlines(keepends=True)
    while kept and kept[-1].lstrip().startswith("#"):
        kept.pop()
    while kept and not kept[-1].strip():
        kept.pop()
    return "".join(kept) + below


def append(m: CommentedMap, key: str, value: Any) -> None:
    """Add ``key`` last in ``m``; the lines that followed the old last entry follow the new one."""
    rest = ""
    if m:
        last = tail(m, last_key(m))
        own, rest = split(last.text())
        if rest:
            last.set(own)
    m[key] = value
    if rest:
        tail(m, key).set("\n" + rest)


def delete(m: CommentedMap, key: str) -> None:
    """Remove ``key`` and the comments directly above it; keep the lines after it."""
    keys = list(m)
    position = keys.index(key)
    _, rest = split(tail(m, key).text())
    if position > 0:
        before = tail(m, keys[position - 1])
        own, lines = split(before.text())
        before.set(own + joined(lines, rest))
    elif rest.strip() and len(keys) > 1:
        above(m, keys[1], rest.lstrip("\n"))  # the new first entry opens the mapping
    del m[key]
    m.ca.items.pop(key, None)


def above(m: CommentedMap, key: str, lines: str) -> None:
    """Put ``lines`` (blank or comment lines) just above ``key`` of ``m``."""
    entry = m.ca.items.setdefault(key, [None, None, None, None])
    entry[1] = [CommentToken(lines, CommentMark(0), None), *(entry[1] or [])]


def leave_empty(doc: CommentedMap, rest: str) -> None:
    """Leave ``endpoints:`` empty (null), followed by what followed its last entry.

    Not ``endpoints: {}``: ruamel prints the comments after a key before a
    flow value, which would put them in front of the ``{}``.
    """
    doc["endpoints"] = None
    header = Slot(doc.ca.items, "endpoints", 2)
    entry = doc.ca.items.get("endpoints") or [None] * 4
    lines = "".join(" " * t.column + str(t.value) for t in entry[3] or [])
    entry[3] = None
    header.set(split(header.text())[0] + lines + rest)


def drop_comments_above_first(doc: CommentedMap) -> None:
    """Drop the comment block between ``endpoints:`` and its first entry.

    ruamel keeps it in the ``endpoints`` key's slots: after an end of line
    comment on that line as one text, otherwise as one token per line.
    """
    header = doc.ca.items.get("endpoints")
    if not header:
        return
    if header[2] is not None:
        slot = Slot(doc.ca.items, "endpoints", 2)
        own, lines = split(slot.text())
        slot.set(own + joined(lines, ""))
    while header[3] and lone_comment(header[3][-1]):
        header[3].pop()


def lone_comment(token: CommentToken) -> bool:
    """A comment line with no blank line between it and what follows."""
    value = str(token.value)
    return value.lstrip().startswith("#") and value.count("\n") <= 1
