"""HTML for the console, escaped by construction.

Everything a page shows passes through :func:`el`: its text children and
attribute values are escaped (``html.escape`` with quotes) unless they are
:class:`Html` made by :func:`el` itself — so a message id, a business-AP or
a client name that a caller chose can never become markup, whichever page
shows it.  No template engine: the pages are small, and a second escaping
convention is how holes appear.

Times are shown in the server's local time with the UTC offset
(``2026-12-07 19:30:05 +09:00``); charts are inline SVG drawn here, so the
console needs no script and nothing from the Internet.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime

__all__ = ["Html", "el", "join", "local_time", "zone_label", "bar_chart", "table", "form", "hidden"]


class Html(str):
    """Text that is already HTML (made by :func:`el` or :func:`join`); everything else is escaped."""

    __slots__ = ()


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, Html):
        return value
    if isinstance(value, (str, int, float)):
        return html.escape(str(value), quote=True)
    if isinstance(value, Iterable):
        return "".join(_text(v) for v in value)
    return html.escape(str(value), quote=True)


_VOID = frozenset({"meta", "link", "input", "br", "hr"})


def el(name: str, attrs: Mapping[str, object] | None = None, *children: object) -> Html:
    """``<name attrs>children</name>``; ``None`` or ``False`` attributes are left out, ``True`` ones bare."""
    parts = [name]
    for key, value in (attrs or {}).items():
        if value is None or value is False:
            continue
        parts.append(key if value is True else f'{key}="{html.escape(str(value), quote=True)}"')
    opening = f"<{' '.join(parts)}>"
    if name in _VOID:
        return Html(opening)
    return Html(f"{opening}{''.join(_text(c) for c in children)}</{name}>")


def join(*children: object) -> Html:
    """Children side by side (text escaped)."""
    return Html("".join(_text(c) for c in children))


def local_time(value: datetime | None, *, seconds: bool = True) -> str:
    """``value`` in the server's local time with its UTC offset (``2026-12-07 19:30:05 +09:00``)."""
    if value is None:
        return "-"
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    local = aware.astimezone()
    stamp = local.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")
    return f"{stamp} {_offset(local)}"


def zone_label() -> str:
    """The local zone as the pages name it: ``JST (UTC+09:00)``."""
    now = datetime.now().astimezone()
    return f"{now.tzname()} (UTC{_offset(now)})"


def _offset(moment: datetime) -> str:
    delta = moment.utcoffset()
    minutes = int(delta.total_seconds() // 60) if delta is not None else 0
    sign = "+" if minutes >= 0 else "-"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def table(header: Sequence[str], rows: Iterable[Sequence[object]], *, cls: str = "grid") -> Html:
    head = el("thead", None, el("tr", None, *(el("th", None, h) for h in header)))
    body = el("tbody", None, *(el("tr", None, *(el("td", None, c) for c in row)) for row in rows))
    return el("table", {"class": cls}, head, body)


def hidden(name: str, value: str) -> Html:
    return el("input", {"type": "hidden", "name": name, "value": value})


def form(action: str, token: str, button: str, fields: Mapping[str, str] | None = None, *,
         cls: str = "inline", danger: bool = False) -> Html:
    """A POST form with the CSRF token, ``fields`` as hidden inputs and one button."""
    inputs = [hidden("csrf_token", token), *(hidden(k, v) for k, v in (fields or {}).items())]
    return el("form", {"method": "post", "action": action, "class": cls},
              *inputs, el("button", {"type": "submit", "class": "danger" if danger else None}, button))


def bar_chart(points: Sequence[tuple[int, int]], *, width: int = 240, height: int = 40, label: str = "") -> Html:
    """A small bar chart of (ok, failed) counts per interval as inline SVG (failed stacked on top, red)."""
    peak = max((ok + bad for ok, bad in points), default=0) or 1
    step = width / max(1, len(points))
    bars = []
    for i, (ok, bad) in enumerate(points):
        x = round(i * step, 2)
        w = max(1.0, round(step - 1, 2))
        h_ok = round(height * ok / peak, 2)
        h_bad = round(height * bad / peak, 2)
        if ok:
            bars.append(el("rect", {"x": x, "y": round(height - h_ok, 2), "width": w, "height": h_ok,
                                    "class": "ok"}))
        if bad:
            bars.append(el("rect", {"x": x, "y": round(height - h_ok - h_bad, 2), "width": w, "height": h_bad,
                                    "class": "bad"}))
    return el("svg", {"xmlns": "http://www.w3.org/2000/svg", "viewBox": f"0 0 {width} {height}",
                      "width": width, "height": height, "class": "chart", "role": "img", "aria-label": label},
              el("title", None, label), el("rect", {"x": 0, "y": 0, "width": width, "height": height,
                                                    "class": "frame"}), *bars)
