"""The typed application keys every service of the gateway reads (aiohttp ``web.AppKey``).

Declared once, here, below every service: the relay, JX, refdb and the
control plane each mount themselves with ``add_…(app)`` and read what they
share from these keys; resources are opened and closed in ``cleanup_ctx``
(:mod:`gateway.serve.app` puts them in this order: store, clock and log,
message security, then the services).
"""

from __future__ import annotations

from aiohttp import web

from gateway.logs.clock import Clock
from gateway.logs.journal import Journal
from gateway.metrics import Metrics
from gateway.security.message import MessageSecurity
from gateway.store import Store
from routing.watch import LiveTable

__all__ = ["LIVE", "NODE", "METRICS", "STORE", "CLOCK", "JOURNAL", "SECURITY"]

#: The route table in force (reloaded on SIGHUP and file changes).
LIVE = web.AppKey("live", LiveTable)
#: This process's node name in the send/receive log and circuit state.
NODE = web.AppKey("node", str)
#: Prometheus metrics of this app (its own registry).
METRICS = web.AppKey("metrics", Metrics)
#: The SQLAlchemy store (SQLite or PostgreSQL), from the first cleanup_ctx on.
STORE = web.AppKey("store", Store)
#: NTP-corrected time.
CLOCK = web.AppKey("clock", Clock)
#: The send/receive log; absent only when ``gateway.logs.enabled`` is false (benchmarks).
JOURNAL = web.AppKey("journal", Journal)
#: WS-Security verify/sign and the replay records, for every handler that takes SOAP from clients.
SECURITY = web.AppKey("security", MessageSecurity)
