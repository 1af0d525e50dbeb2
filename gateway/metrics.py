"""Prometheus metrics of one gateway (``GET /metrics``).

Each app has its own registry, so several gateways in one process (tests)
never mix their counts.  Destination labels only ever carry names from the
route table (or ``-``), never raw client input, to keep cardinality bounded.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

import platform

from prometheus_client import (
    CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, disable_created_metrics, generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gateway import version

__all__ = ["Metrics", "CONTENT_TYPE_LATEST"]

# The *_created series only add noise to a gateway's dashboards.
disable_created_metrics()  # type: ignore[no-untyped-call]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """Counters and histograms the relay and the config watcher update."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            "bmrgw_requests", "Relayed requests by destination endpoint and outcome (ok, fault, error).",
            ["destination", "status"], registry=self.registry)
        self._faults = Counter(
            "bmrgw_gateway_faults", "SOAP faults raised by the gateway itself, by g:Error code.",
            ["code"], registry=self.registry)
        self._latency = Histogram(
            "bmrgw_request_duration_seconds", "Seconds from the request's arrival until the answer was handed over, per destination.",
            ["destination"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.config_generation = Gauge(
            "bmrgw_config_generation", "How many times the endpoint table was (re)loaded.", registry=self.registry)
        self.config_error = Gauge(
            "bmrgw_config_error", "1 while the config file on disk is invalid and the old table stays in force.",
            registry=self.registry)
        self._ntp_offset = Gauge("bmrgw_ntp_offset_seconds", "Seconds the NTP-corrected clock adds to system time.",
                                 registry=self.registry)
        self._ntp_synced = Gauge("bmrgw_ntp_synced", "1 while a good NTP answer came within 4 intervals.",
                                 registry=self.registry)
        self._log = Gauge("bmrgw_log_records", "Send/receive log records by state (written, queued, dropped).",
                          ["state"], registry=self.registry)
        self._expiry = Gauge(
            "bmrgw_certificate_expiry_seconds", "Seconds until a certificate in use expires (a CRL: until its "
            "next update); negative once expired. role: server, client_ca, crl, endpoint NAME, peer NAME.",
            ["role", "subject"], registry=self.registry)
        self._children: dict[tuple[str, str], tuple[Counter, Histogram]] = {}
        # process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, process_start_time_seconds…
        # of the process that answers the scrape (with --workers: one worker; each worker answers for itself).
        ProcessCollector(registry=self.registry)
        build = Gauge("bmrgw_build_info", "Always 1; the labels say which bmrgw and Python this process runs.",
                      ["version", "python"], registry=self.registry)
        build.labels(version(), platform.python_version()).set(1)

    def observe(self, destination: str, status: str, seconds: float) -> None:
        key = (destination, status)
        children = self._children.get(key)
        if children is None:  # labels() takes a lock and builds keys: once per pair is enough
            children = self._children[key] = (self._requests.labels(destination, status),
                                              self._latency.labels(destination))
        children[0].inc()
        children[1].observe(seconds)

    def ntp(self, *, offset: float, synced: bool) -> None:
        self._ntp_offset.set(offset)
        self._ntp_synced.set(1 if synced else 0)

    def journal(self, status: Mapping[str, Any]) -> None:
        """Copy the journal's counters (it keeps them; the registry only shows them)."""
        for state in ("written", "queued", "dropped"):
            self._log.labels(state).set(status[state])

    def certificates(self, expiries: Iterable[Any]) -> None:
        """Seconds left of each certificate in use (objects with ``role``, ``subject``, ``seconds_left(now)``)."""
        now = time.time()
        self._expiry.clear()  # a replaced certificate's series goes away with it
        for item in expiries:
            self._expiry.labels(item.role, item.subject).set(item.seconds_left(now))

    def fault(self, code: str) -> None:
        self._faults.labels(code).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
