"""The scenarios ``make bench`` runs, in order, with the acceptance targets they are judged by.

To add a benchmark (refdb push rows/s, file transfer, two gateway workers
against one), write a class with ``name``, ``title`` and ``run(bench) ->
Section`` (see ``harness.Scenario``) and append an instance here.
"""

from __future__ import annotations

from .api import ApiRelayLoad, CharsetConversion
from .attack import Attack
from .files import FileTransfer
from .harness import Scenario
from .jx import JxCycles
from .refdb import RefdbPush, RefdbSnapshot
from .bigbody import BigBody
from .relay import AddedLatency, CpuRatio, LatencyRatio, RelayLoad, ThroughputRatio
from .resilience import Isolation, Soak
from .workers import Workers
from .secure import SecuredRelay

__all__ = ["SCENARIOS"]

KIB = 1024

SCENARIOS: tuple[Scenario, ...] = (
    RelayLoad(
        name="1k", title="Throughput: 1 KiB envelope at saturation (50 connections, backend answers at once)",
        envelope_bytes=1 * KIB, connections=50, backend_delay=0.0, rounds=8,
        rules=(ThroughputRatio(target="bmrgw", baseline="nginx", at_least=0.6),
               ThroughputRatio(target="bmrgw-nolog", baseline="nginx", at_least=0.6),
               CpuRatio(target="bmrgw", baseline="nginx", at_most=4.0),
               # The send/receive log may cost at most 10 % of relay throughput.
               ThroughputRatio(target="bmrgw", baseline="bmrgw-nolog", at_least=0.90)),
    ),
    RelayLoad(
        name="100k", title="Throughput: 100 KiB envelope at saturation (50 connections, backend answers at once)",
        envelope_bytes=100 * KIB, connections=50, backend_delay=0.0, rounds=4,
        rules=(ThroughputRatio(target="bmrgw", baseline="nginx", at_least=0.7),),
    ),
    RelayLoad(
        name="latency", title="Added latency: 1 KiB envelope, 100 connections, backend waits 30 ms",
        envelope_bytes=1 * KIB, connections=100, backend_delay=0.030, backend="echo", rounds=2,
        rules=(AddedLatency(target="bmrgw", percentile="50", at_most_ms=1.0),
               AddedLatency(target="bmrgw", percentile="99", at_most_ms=5.0),
               AddedLatency(target="bmrgw-nolog", percentile="50", at_most_ms=1.0),
               AddedLatency(target="bmrgw-nolog", percentile="99", at_most_ms=5.0)),
    ),
    RelayLoad(
        name="500c-100k", title="500 connections × 100 KiB envelopes, every answer checked byte for byte",
        envelope_bytes=100 * KIB, connections=500, backend_delay=0.0, check_answers=True,
        rules=(LatencyRatio(target="bmrgw", baseline="nginx", percentile="99", at_most=2.0),),
    ),
    RelayLoad(
        name="1k-demo", title="Throughput: 1 KiB envelope against the demo backend (a realistic service; "
        "50 connections)",
        envelope_bytes=1 * KIB, connections=50, backend_delay=0.0, backend="demo", rounds=2,
        rules=(ThroughputRatio(target="bmrgw", baseline="nginx", at_least=0.35),),
    ),
    BigBody(),
    SecuredRelay(
        name="wss-1k", title="Secured relay: WS-Security verify inbound + sign outbound, 1 KiB envelope "
        "(50 connections) vs plain relay",
        envelope_bytes=1 * KIB, connections=50, at_least={"bmrgw-wss-ec": 0.5, "bmrgw-wss-rsa": 0.2},
    ),
    RefdbPush(name="refdb", title="Reference DB: 100,000-row full push through /refdb vs raw SQLAlchemy executemany"),
    RefdbSnapshot(name="refdb-1m", title="Reference DB: 1,000,000-row full replace on SQLite with a reader querying"),
    JxCycles(),
    FileTransfer(
        name="file1g", title="File transfer: 1 GiB (--file-mib) through bmrgw in 64 MiB parts vs a raw upload "
        "through nginx",
    ),
    ApiRelayLoad(
        name="api-1k", title="HTTP API relay: 1 KiB JSON through /api vs 1 KiB envelope through /soap "
        "(50 connections, one gateway, echo backend)",
        body_bytes=1 * KIB, connections=50, at_least=0.90,
    ),
    CharsetConversion(
        name="charset-100m", title="Character profile: a 100 MB CP932 CSV to UTF-8 and back (gaiji table, 1 MiB chunks)",
        size=100 * 1000 * 1000, at_least_mb_s=50.0,
    ),
    Workers(),
    Isolation(),
    Soak(),
    Attack(),
)
