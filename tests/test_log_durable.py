"""No answered exchange without its record (issue 18, finding 5): kill -9 during 200 exchanges.

A real ``bmrgw serve`` relays to a real backend for 200 concurrent callers; it is killed with
SIGKILL at a random moment.  Every exchange whose whole answer reached its caller must be in
the send/receive log afterwards — on SQLite and on PostgreSQL, five times each.  Before the fix
the records of answered exchanges still sat in the journal's queue when the process died.
"""

from __future__ import annotations

import asyncio
import contextlib
import marshal
import random
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import create_engine, update

from gateway.logs.batch import EXCHANGE_SIZE, Batch, entries_of, parts_of
from gateway.logs.chain import verify
from gateway.logs.journal import Journal
from gateway.logs.records import ApiExchange, Entry, unpack_entries
from gateway.logs.tables import TABLES, LogFilter, read
from gateway.store import Store

from .conftest import GatewayProcess, RecordingBackend, message, soap11_headers
from .pg import pg_schema
from .test_journal import chain, entry, exchange, store  # noqa: F401  (store: fixture)

CALLERS = 200
ROUNDS = 5


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with contextlib.ExitStack() as stack:
        yield f"sqlite:///{tmp_path}/kill.db" if request.param == "sqlite" else stack.enter_context(pg_schema())


async def _caller(http: aiohttp.ClientSession, url: str, prefix: str, answered: list[str],
                  stop: asyncio.Event) -> None:
    """Send exchanges one after the other until the gateway is gone; note the fully answered ones."""
    body = message("valid/soap11-no-header.xml")
    n = 0
    while not stop.is_set():
        message_id = f"{prefix}-{n}"
        n += 1
        try:
            async with http.post(f"{url}/soap/demo", data=body,
                                 headers={**soap11_headers(), "X-Message-Id": message_id}) as resp:
                answer = await resp.read()  # raises when the connection breaks before the end
                if resp.status == 200 and answer.endswith(b"</s:Envelope>"):
                    answered.append(message_id)

        except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError):
            return


def _logged(url: str, prefix: str) -> set[str]:
    engine = create_engine(url)
    try:
        return {r.message_id for r in read(engine, LogFilter(kind="relay"))
                if r.message_id is not None and r.message_id.startswith(prefix) and r.direction == "response"}
    finally:
        engine.dispose()


async def test_kill_9_leaves_every_answered_exchange_in_the_log(
        gateway_process: Callable[..., GatewayProcess], backend: RecordingBackend, db_url: str) -> None:
    rng = random.Random()
    totals: list[int] = []
    for round_ in range(ROUNDS):
        name = f"kill{round_}"
        gw = gateway_process({"gateway": {"db": db_url}, "endpoints": {"demo": {"url": backend.url}}}, name=name)
        answered: list[str] = []
        stop = asyncio.Event()
        connector = aiohttp.TCPConnector(limit=CALLERS)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=20)) as http:
            callers = [asyncio.create_task(_caller(http, gw.url, f"{name}-{i}", answered, stop))
                       for i in range(CALLERS)]
            while not answered:  # in full flow (a loaded machine may take a while for the first answers)
                await asyncio.sleep(0.01)
            await asyncio.sleep(rng.uniform(0.0, 1.0))  # then a random moment
            gw.proc.send_signal(signal.SIGKILL)
            stop.set()
            await asyncio.gather(*callers)
        await asyncio.to_thread(gw.proc.wait, 10)  # read at once: what was durable was committed before the answer
        logged = await asyncio.to_thread(_logged, db_url, name)
        missing = set(answered) - logged
        assert not missing, f"round {round_}: {len(missing)} of {len(answered)} answered exchanges not logged"
        totals.append(len(answered))
    print(f"answered before kill -9, per round: {totals}")


async def test_a_durable_future_turns_true_only_once_the_record_is_committed(store: Store) -> None:
    journal = Journal(store.engine, "dc-east", linger=5.0)  # a linger no waiting caller may pay
    await journal.start()
    try:
        started = time.monotonic()
        done = await journal.record(entry(0), durable=True)
        assert await asyncio.wait_for(done, 2.0) is True
        assert time.monotonic() - started < 2.0
        assert [r.message_id for r in chain(store.engine, "dc-east")] == ["m-0"]
        poisoned = entry(1)
        object.__setattr__(poisoned, "bytes_in", 2**70)  # the store refuses it
        refused = await journal.record(poisoned, durable=True)
        assert await asyncio.wait_for(refused, 5.0) is False
    finally:
        await journal.close()


async def test_the_journal_bounds_every_wait_and_waiters_of_one_batch_are_independent(store: Store) -> None:
    # The relay awaits its future without a timer of its own: the batch's one timer must end the wait.
    journal = Journal(store.engine, "dc-east", durable_wait=0.3)
    await journal.start()
    blocker = store.engine.connect()
    transaction = blocker.begin()
    try:
        await journal.record(entry(0))
        await journal.flush()
        # Hold the chain head: the writer waits for the lock, as it would for a stuck store.
        blocker.execute(update(TABLES.head).where(TABLES.head.c.node == "dc-east").values(seq=TABLES.head.c.seq))
        first = await journal.record(exchange(1), durable=True)
        second = await journal.record(exchange(2), durable=True)
        third = await journal.record(exchange(3), durable=True)
        waiting = asyncio.ensure_future(third)
        waiting.cancel()  # one caller cut off (its client went away) ...
        started = time.monotonic()
        assert await asyncio.wait_for(first, 5.0) is False  # ... and the others are answered "not durable"
        assert await asyncio.wait_for(second, 5.0) is False
        assert 0.1 < time.monotonic() - started < 2.0
    finally:
        transaction.rollback()
        blocker.close()
    await journal.close()
    # Not durable in time is not lost: the records commit once the store lets them.
    assert [r.message_id for r in chain(store.engine, "dc-east")] == ["m-0", "x-1", "x-1", "x-2", "x-2", "x-3", "x-3"]
    assert journal.status()["dropped"] == 0


async def test_exchanges_travel_as_one_batch_of_flat_values(store: Store) -> None:
    journal = Journal(store.engine, "dc-east", batch_size=1000, linger=0.2)
    await journal.start()
    try:
        await journal.record(entry(0))
        await journal.flush()
        before = journal.status()["batches"]
        waits = [await journal.record(exchange(i), durable=True) for i in range(1, 301)]
        assert all(await asyncio.wait_for(asyncio.gather(*waits), 10.0))
        assert journal.status()["batches"] - before == 1  # one frame, one transaction for 300 exchanges
    finally:
        await journal.close()
    records = chain(store.engine, "dc-east")
    assert len(records) == 601 and verify(store.engine, None).ok


def test_a_batch_gives_back_every_kind_of_entry_it_was_given() -> None:
    # Exchanges are laid out flat, other entries packed; a refused record is found by cutting the
    # values back into entries, and the process log describes them as they were queued.
    entries: list[Entry] = [exchange(1), entry(2), ApiExchange(exchange(3), "1 (U+20BB7 ×1)"), exchange(4)]
    batch = Batch()
    for one in entries:
        batch.add(one)
    assert batch.count == 4 and len(batch.values) == 2 * EXCHANGE_SIZE + 2
    values = marshal.loads(marshal.dumps(batch.values))  # as the writer receives them
    assert entries_of(values) == entries
    assert [len(part) for part in parts_of(values)] == [EXCHANGE_SIZE, 1, 1, EXCHANGE_SIZE]
    records = unpack_entries(values)
    assert [(r.kind, r.message_id, r.direction) for r in records] == [
        ("relay", "x-1", "request"), ("relay", "x-1", "response"), ("relay", "m-2", "request"),
        ("api", "x-3", "request"), ("api", "x-3", "response"), ("relay", "x-4", "request"), ("relay", "x-4", "response")]
    assert records[4].charset_substitutions == "1 (U+20BB7 ×1)"
