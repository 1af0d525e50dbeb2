"""A PutDocument's transaction does not take the send/receive log's chain lock (issue 20, item 4):
while another transaction holds the node's chain head, the document still commits; the put
answers ``true`` only once its log record is committed too (after the lock is released)."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from sqlalchemy import create_engine, text

from .conftest import GatewayFactory
from .jxhelp import put
from .pg import pg_schema


async def test_a_put_commits_its_document_without_the_chain_lock_and_answers_once_logged(
        gateway: GatewayFactory, http: aiohttp.ClientSession) -> None:
    with pg_schema() as db:
        url = await gateway({"gateway": {"name": "gw", "db": db}})
        assert (await put(http, url, "first", b"makes the chain head")).result is True
        engine = create_engine(db)
        try:
            with engine.connect() as holder:
                holder.begin()
                [node] = holder.execute(text("SELECT node FROM exchange_log_head FOR UPDATE")).scalars().all()
                assert node.startswith("gw")
                answer = asyncio.create_task(put(http, url, "second", b"put while the chain is locked"))
                deadline, stored = time.monotonic() + 10, False
                with engine.connect() as reader:
                    while not stored and time.monotonic() < deadline:
                        await asyncio.sleep(0.1)
                        stored = reader.execute(text("SELECT count(*) FROM jx_document WHERE message_id = 'second'"))\
                            .scalar_one() == 1
                        reader.rollback()
                assert stored, "the document's transaction waited for the log's chain lock"
                assert not answer.done(), "no true before the put's log record is committed"
                holder.rollback()
            assert (await asyncio.wait_for(answer, 10)).result is True
            with engine.connect() as c:
                logged = c.execute(text("SELECT count(*) FROM exchange_log WHERE message_id = 'second' "
                                        "AND endpoint = 'jx:PutDocument'")).scalar_one()
            assert logged == 1
        finally:
            engine.dispose()
