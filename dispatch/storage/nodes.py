"""Nodes sharing one database: each node's id, and its heartbeat in the ``nodes`` table.

Several Dispatch nodes may share one PostgreSQL database (docs/scaling.md). Each has an id:
``database.node_id`` when configured, otherwise one generated at first start
(``<hostname>-<6 hex digits>``) and kept in ``<data_dir>/node-id``, so that it survives
restarts and stays with the node's spool. The log writer puts it on every row it writes.

:class:`Heartbeat` (started by :meth:`dispatch.storage.store.Store.run`, stopped by
cancellation: it holds nothing that needs saving) upserts the node's row in ``nodes``
(``last_seen``) every :data:`HEARTBEAT_SECONDS`, so the dashboard can list every node and
when each was last seen. A failed heartbeat is only logged at debug level: the log writer
already reports an unreachable database, and a node that cannot write simply ages in the list.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import socket
import time
from pathlib import Path
from typing import Any, Final

import attrs
import trio

from dispatch import __version__
from dispatch.config.node_id import check_node_id
from dispatch.storage.database import Database, DatabaseUnavailableError, SqlCursor

log = logging.getLogger("dispatch.storage")

NODE_ID_FILE: Final = "node-id"
HEARTBEAT_SECONDS: Final = 10.0
# A node not seen for three heartbeats is shown as not answering.
STALE_AFTER_SECONDS: Final = 3 * HEARTBEAT_SECONDS

UPSERT_NODE: Final = (
    "INSERT INTO nodes (node_id, hostname, version, started_at, last_seen) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (node_id) DO UPDATE SET "
    "hostname = excluded.hostname, version = excluded.version, "
    "started_at = excluded.started_at, last_seen = excluded.last_seen"
)


def resolve_node_id(configured: str, data_dir: str | os.PathLike[str]) -> str:
    """The configured id, else the one kept in ``data_dir`` (made and saved on first use).

    Blocking (a small file); called once at start. Raises :class:`ValueError` for a bad
    configured id and :class:`OSError` when the file can be neither read nor written.
    """
    if configured:
        return check_node_id(configured)
    path = Path(data_dir) / NODE_ID_FILE
    try:
        return check_node_id(path.read_text(encoding="ascii").strip())
    except FileNotFoundError:
        pass
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(
            f"{path}: not a node id ({exc}); delete the file to generate a new one, "
            "or set database.node_id"
        ) from exc
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname().split(".")[0])[:40] or "node"
    node_id = check_node_id(f"{host}-{secrets.token_hex(3)}")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{NODE_ID_FILE}.tmp")
    temporary.write_text(node_id + "\n", encoding="ascii")
    os.replace(temporary, path)
    return node_id


@attrs.frozen
class NodeRow:
    """One node as the ``nodes`` table knows it."""

    node_id: str
    hostname: str
    version: str
    started_at: float
    last_seen: float

    def answering(self, now: float) -> bool:
        return now - self.last_seen <= STALE_AFTER_SECONDS


def _list_nodes(cursor: SqlCursor) -> list[Any]:
    cursor.execute(
        "SELECT node_id, hostname, version, started_at, last_seen FROM nodes ORDER BY node_id"
    )
    return cursor.fetchall()


async def list_nodes(database: Database) -> list[NodeRow]:
    """Every node that ever wrote a heartbeat, by id. Raises ``DatabaseUnavailableError``."""
    rows = await database.read(_list_nodes)
    return [NodeRow(str(r[0]), str(r[1]), str(r[2]), float(r[3]), float(r[4])) for r in rows]


class Heartbeat:
    """Keeps this node's row in ``nodes`` fresh. Owns nothing but its schedule."""

    def __init__(self, database: Database, node_id: str) -> None:
        self._database = database
        self.node_id = node_id
        self.started_at = time.time()
        self.beats = 0

    async def beat(self) -> None:
        """Write the row now. Raises ``DatabaseUnavailableError``."""
        row = (self.node_id, socket.gethostname(), __version__, self.started_at, time.time())

        def work(cursor: SqlCursor) -> None:
            cursor.execute(UPSERT_NODE, row)

        await self._database.write(work)
        self.beats += 1

    async def run(self) -> None:
        """Beat every :data:`HEARTBEAT_SECONDS` until cancelled."""
        while True:
            try:
                await self.beat()
            except DatabaseUnavailableError as exc:
                log.debug("node heartbeat not written: %s", exc)
            await trio.sleep(HEARTBEAT_SECONDS)
