"""The console's words in Japanese and English.

The language is the ``bmrgw_lang`` cookie (set by the toggle in the page
header, ``?lang=ja`` or ``?lang=en``), else the first of ``ja``/``en`` in
``Accept-Language``, else English.  A key missing from a language falls
back to English, then to the key itself, so a page never fails on a label.
"""

from __future__ import annotations

from aiohttp import web

__all__ = ["LANG_COOKIE", "LANGUAGES", "language", "Labels"]

LANG_COOKIE = "bmrgw_lang"
LANGUAGES = ("ja", "en")

_EN: dict[str, str] = {
    "title": "bmrgw console", "overview": "Overview", "endpoints": "Endpoints", "log": "Send/receive log",
    "jx": "JX mailboxes", "refdb": "Reference DB", "integrity": "Log integrity", "signed_in": "Signed in as",
    "times_in": "Times in", "health": "Health", "ntp": "NTP", "log_writer": "Log writer", "workers": "Processes",
    "config": "Configuration", "generation": "generation", "synced": "synced", "not_synced": "NOT synced",
    "offset": "offset", "running": "running", "not_running": "NOT running", "disabled_log": "disabled",
    "queued": "queued", "written": "written", "traffic": "Traffic per endpoint", "last_hours": "last {n} h",
    "endpoint": "Endpoint", "kind": "Kind", "state": "State", "circuits": "Circuits", "actions": "Actions",
    "disable": "Disable", "enable": "Enable", "reset": "Reset circuits", "disabled": "disabled",
    "enabled": "enabled", "ok": "ok", "failed": "failed", "requests": "requests", "search": "Search",
    "message_id": "Message id", "business_ap": "Business-AP", "client": "Client", "status": "Status",
    "since": "Since", "until": "Until", "any": "any", "time": "Time", "node": "Node", "direction": "Dir",
    "from": "From", "to": "To", "http": "HTTP", "size_in": "In", "size_out": "Out", "ms": "ms",
    "fault": "Fault", "trail": "Trail of message", "no_records": "No matching records.",
    "receiver": "Receiver", "sender": "Sender", "created": "Created", "size": "Size", "deliveries": "Deliveries",
    "confirm": "Force-confirm", "purge": "Purge", "purge_ask": "Purge this document for good?",
    "purge_warn": "Its bytes are deleted and cannot be delivered again. The log keeps the record of it.",
    "purge_yes": "Yes, purge", "cancel": "Cancel", "no_documents": "No documents.", "dataset": "Dataset",
    "version": "Version", "rows": "Rows", "last_push": "Last push", "no_datasets": "No datasets declared.",
    "verify": "Run a verification", "last_result": "Last verification", "verified_ok": "OK: no tampering found",
    "verified_bad": "FAILED: tampering found", "verifying": "running…", "never": "No verification run yet.",
    "started": "Started", "finished": "Finished", "by": "by", "chains": "Chains", "problems": "Problems",
    "done": "Done", "refused": "Refused", "error": "Error", "store": "Store", "up": "up",
    "no_jx": "JX is not running on this gateway.", "show": "Show", "hours": "Hours", "language": "日本語",
    "reload": "Reload", "last_error": "Last error", "failures": "Failures", "url": "URL",
    "time_hint": "ISO 8601 (local time unless an offset is given) or 30m, 2h, 1d ago",
}

_JA: dict[str, str] = {
    "title": "bmrgw 運用コンソール", "overview": "概要", "endpoints": "エンドポイント", "log": "送受信ログ",
    "jx": "JXメールボックス", "refdb": "参照DB", "integrity": "ログ改ざん検査", "signed_in": "ログイン中",
    "times_in": "時刻", "health": "稼働状態", "ntp": "NTP", "log_writer": "ログ書込み", "workers": "プロセス",
    "config": "設定", "generation": "世代", "synced": "同期済み", "not_synced": "未同期", "offset": "補正",
    "running": "稼働中", "not_running": "停止", "disabled_log": "無効", "queued": "待ち", "written": "書込み済み",
    "traffic": "エンドポイント別の通信量", "last_hours": "直近{n}時間", "endpoint": "エンドポイント",
    "kind": "種類", "state": "状態", "circuits": "回路", "actions": "操作", "disable": "停止", "enable": "再開",
    "reset": "回路をリセット", "disabled": "停止中", "enabled": "有効", "ok": "正常", "failed": "失敗",
    "requests": "件", "search": "検索", "message_id": "メッセージID", "business_ap": "業務AP",
    "client": "クライアント", "status": "結果", "since": "開始", "until": "終了", "any": "すべて", "time": "時刻",
    "node": "ノード", "direction": "方向", "from": "送信元", "to": "宛先", "http": "HTTP", "size_in": "受信",
    "size_out": "送信", "ms": "ミリ秒", "fault": "フォールト", "trail": "メッセージの経路",
    "no_records": "該当する記録はありません。", "receiver": "受信者", "sender": "送信者", "created": "受付",
    "size": "サイズ", "deliveries": "配信回数", "confirm": "強制受領確認", "purge": "削除",
    "purge_ask": "この文書を完全に削除しますか？",
    "purge_warn": "文書の内容は削除され、再配信できなくなります。送受信ログの記録は残ります。",
    "purge_yes": "削除する", "cancel": "取消", "no_documents": "文書はありません。", "dataset": "データセット",
    "version": "版", "rows": "行数", "last_push": "最終更新", "no_datasets": "データセットは宣言されていません。",
    "verify": "検査を実行", "last_result": "直近の検査", "verified_ok": "正常：改ざんは見つかりません",
    "verified_bad": "異常：改ざんを検出", "verifying": "実行中…", "never": "まだ検査していません。",
    "started": "開始", "finished": "終了", "by": "実行者", "chains": "チェーン", "problems": "問題",
    "done": "完了", "refused": "拒否", "error": "エラー", "store": "データベース", "up": "稼働",
    "no_jx": "このゲートウェイではJXが動いていません。", "show": "表示", "hours": "時間",
    "language": "English", "reload": "再読込", "last_error": "直近のエラー", "failures": "失敗数", "url": "URL",
    "time_hint": "ISO 8601（オフセットがなければ現地時刻）または 30m, 2h, 1d 前",
}

_TABLES = {"en": _EN, "ja": _JA}


def language(request: web.Request) -> str:
    """``ja`` or ``en`` for ``request`` (the toggle's cookie, else Accept-Language)."""
    chosen = request.query.get("lang") or request.cookies.get(LANG_COOKIE)
    if chosen in LANGUAGES:
        return chosen
    for part in request.headers.get("Accept-Language", "").split(","):
        tag = part.split(";")[0].strip().lower()
        if tag.startswith("ja"):
            return "ja"
        if tag.startswith("en"):
            return "en"
    return "en"


class Labels:
    """The labels of one language: ``labels["overview"]``, ``labels("last_hours", n=24)``."""

    def __init__(self, lang: str) -> None:
        self.lang = lang if lang in LANGUAGES else "en"
        self._table = _TABLES[self.lang]

    def __getitem__(self, key: str) -> str:
        return self._table.get(key) or _EN.get(key) or key

    def __call__(self, key: str, **values: object) -> str:
        return self[key].format(**values)

    @property
    def other(self) -> str:
        return "en" if self.lang == "ja" else "ja"
