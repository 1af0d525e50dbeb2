"""One item of the connection test (接続試験) and what it found."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["Result", "Status", "ITEMS", "Probe"]

Status = Literal["pass", "fail", "skip"]

#: The checklist, in the order it runs: id, Japanese and English name, the items it needs.
ITEMS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("dns", "名前解決", "DNS resolution", ()),
    ("tcp", "TCP接続", "TCP reachability", ("dns",)),
    ("tls", "サーバ証明書（チェーン・名前）", "TLS chain and name", ("tcp",)),
    ("client_cert", "クライアント証明書", "client certificate accepted", ("tls",)),
    ("basic", "Basic認証", "Basic credentials", ("client_cert",)),
    ("ntp", "時刻同期（NTP）", "NTP offset against the gateway", ("client_cert",)),
    ("echo", "中継疎通（エコー業務AP）", "relay round trip (echo business AP)", ("basic",)),
    ("jx", "JX Put → Get → Confirm", "JX Put → Get → Confirm", ("basic",)),
    ("refdb", "参照DB 送信（dry-run）", "refdb dry-run push", ("basic",)),
    ("files", "ファイル転送", "file-transfer round trip", ("basic",)),
)


@dataclass
class Result:
    """An item's outcome: passed, failed with the reason and the fix, or skipped with why."""

    id: str
    ja: str
    en: str
    status: Status = "skip"
    detail: str = ""
    """What was seen (passed) or why it was skipped."""
    reason: str = ""
    """Why it failed."""
    fix: str = ""
    """What to change so that it passes."""
    message_ids: list[str] = field(default_factory=list)
    """Message ids of the exchanges it made, as the gateway's send/receive log has them."""
    seconds: float = 0.0

    def passed(self, detail: str, *message_ids: str) -> Result:
        self.status, self.detail = "pass", detail
        self.message_ids.extend(message_ids)
        return self

    def failed(self, reason: str, fix: str, *message_ids: str) -> Result:
        self.status, self.reason, self.fix = "fail", reason, fix
        self.message_ids.extend(message_ids)
        return self

    def skipped(self, why: str) -> Result:
        self.status, self.detail = "skip", why
        return self

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "ja": self.ja, "en": self.en, "status": self.status, "detail": self.detail,
                "reason": self.reason, "fix": self.fix, "message_ids": self.message_ids,
                "seconds": round(self.seconds, 3)}


@dataclass
class Probe:
    """What earlier items learnt that later ones use."""

    addresses: list[str] = field(default_factory=list)
    context: ssl.SSLContext | None = None
    """The site's TLS client context (trust anchors and client certificate)."""
    echo_answer: tuple[int, bytes, str] | None = None
    """Status, body and message id of the echo exchange (made by the Basic item when it runs)."""
