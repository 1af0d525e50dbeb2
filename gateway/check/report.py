"""The connection test's results as a checklist (Japanese and English), JSON and one printable HTML page."""

from __future__ import annotations

import json
from collections.abc import Sequence
from html import escape
from typing import Any

from .result import Result
from .site import Site

__all__ = ["checklist", "as_json", "as_html"]

_MARK = {"pass": "OK  ", "fail": "NG  ", "skip": "SKIP"}
_WORD = {"pass": "合格 / passed", "fail": "不合格 / failed", "skip": "対象外 / skipped"}


def checklist(site: Site, results: Sequence[Result], started: str) -> list[str]:
    """The checklist for a terminal."""
    failed = sum(r.status == "fail" for r in results)
    lines = [f"接続試験 / Connection test: {site.name} → {site.gateway}  ({started})", ""]
    for number, r in enumerate(results, 1):
        lines.append(f"[{_MARK[r.status]}] {number}. {r.ja} / {r.en}" + (f" — {r.detail}" if r.detail else ""))
        if r.status == "fail":
            lines += [f"        原因 / reason: {r.reason}", f"        対処 / fix:    {r.fix}"]
        if r.message_ids:
            lines.append(f"        message id: {', '.join(r.message_ids)}")
    lines += ["", f"結果 / result: {'合格 / PASSED' if not failed else f'不合格 / FAILED ({failed} item(s))'}"]
    return lines


def as_json(site: Site, results: Sequence[Result], started: str) -> dict[str, Any]:
    return {"site": site.name, "gateway": site.gateway, "started": started,
            "passed": all(r.status != "fail" for r in results), "items": [r.as_json() for r in results]}


def as_html(site: Site, results: Sequence[Result], started: str) -> str:
    """One self-contained page (no scripts, no external files) that prints on one A4 sheet."""
    passed = all(r.status != "fail" for r in results)
    rows = "".join(_row(n, r) for n, r in enumerate(results, 1))
    return f"""<!DOCTYPE html>
<html lang="ja"><head><meta charset="utf-8"><title>接続試験 {escape(site.name)}</title>
<style>
body{{font-family:sans-serif;font-size:10pt;margin:1.5cm}} table{{border-collapse:collapse;width:100%}}
th,td{{border:1px solid #888;padding:4px;vertical-align:top;text-align:left}} .pass{{color:#060}}
.fail{{color:#a00;font-weight:bold}} .skip{{color:#666}} code{{font-size:9pt}}
@page{{size:A4;margin:1cm}}
</style></head><body>
<h1>接続試験結果 / Connection test report</h1>
<p>サイト / site: <b>{escape(site.name)}</b> &nbsp; ゲートウェイ / gateway: <code>{escape(site.gateway)}</code>
&nbsp; 実施 / run: {escape(started)}</p>
<p class="{'pass' if passed else 'fail'}">結果 / result: {'合格 / PASSED' if passed else '不合格 / FAILED'}</p>
<table><tr><th>#</th><th>項目 / item</th><th>結果 / result</th><th>内容・原因・対処 / detail, reason, fix</th>
<th>message id</th></tr>{rows}</table>
<p>確認者 / checked by: ______________________ &nbsp; 日付 / date: ____________</p>
</body></html>
"""


def _row(number: int, r: Result) -> str:
    text = escape(r.detail) if r.status != "fail" else \
        f"原因 / reason: {escape(r.reason)}<br>対処 / fix: {escape(r.fix)}"
    ids = "<br>".join(f"<code>{escape(i)}</code>" for i in r.message_ids)
    return (f'<tr><td>{number}</td><td>{escape(r.ja)}<br>{escape(r.en)}</td>'
            f'<td class="{r.status}">{_WORD[r.status]}</td><td>{text}</td><td>{ids}</td></tr>')


def dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False, indent=2)
