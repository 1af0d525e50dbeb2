"""Gateway-assigned message ids."""

from __future__ import annotations

import time
import uuid

from gateway.ids import new_message_id


def test_ids_are_uuid7_ordered_by_time_and_unique() -> None:
    before = time.time_ns() // 1_000_000
    ids = [new_message_id() for _ in range(2000)]
    after = time.time_ns() // 1_000_000
    parsed = [uuid.UUID(i) for i in ids]
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in parsed)
    millis = [u.int >> 80 for u in parsed]
    assert before <= millis[0] <= millis[-1] <= after
    assert millis == sorted(millis)
    assert len(set(ids)) == len(ids)
