"""What the Settings page shows of the database (:func:`database_usage`) on both engines."""

from __future__ import annotations

from pathlib import Path

from dispatch.storage.usage import TABLES, database_usage
from tests.storage.conftest import DbRef, make_store, received, running


async def test_rows_per_table_and_the_size(db: DbRef, tmp_path: Path) -> None:
    store = make_store(db, tmp_path)
    async with running(store):
        for number in range(3):
            store.log.record(received(number))
        await store.log.wait_until_written()
        usage = await database_usage(store.database)
    assert list(usage.rows) == list(TABLES)
    assert "counters_by_node" not in TABLES  # renamed to counters by migration 6
    assert usage.rows["message_log"] == 3
    assert usage.rows["message_log_addresses"] == 6  # sender and recipient of each
    assert usage.rows["schema_version"] >= 6
    assert usage.size_bytes is not None
    assert usage.size_bytes > 0
