"""Storage: the message log, audit log and counters in a database beside the spool (SPEC §7).

The database is never on the acceptance or delivery path. Intake and delivery call
:meth:`MessageLog.record` (synchronous, never blocks, never raises); a writer task moves the
records to the database in batches, or to a journal file on local disk while the database is
unavailable, and replays the journal when it comes back. The spool stays the truth about
messages; this is the truth about what happened to them.

Typical use::

    store = open_store(config.database.url, config.data_dir)
    Component("storage", store.run)                    # in the supervisor, early

    store.log.record(MessageEvent(message_id=envelope.id, event="received", ...))
    store.log.audit(AuditEntry(category="ApiKey", level="Notice", message="key created"))

    await store.api_keys.find_by_prefix(prefix)       # rows; keys are made and checked by
                                                      # dispatch.security.api_keys
    await store.queries.counts_today()                # {"received": 12, "delivered": 11, ...}
    store.log.database_reachable, store.log.pending   # for /health and /metrics
"""

from dispatch.storage.api_keys import ApiKeyRecord, ApiKeyStore, UnknownApiKeyError
from dispatch.storage.database import Database, DatabaseUnavailableError, SqlCursor
from dispatch.storage.journal import JOURNAL_NAME
from dispatch.storage.log_writer import MessageLog, StopRequest
from dispatch.storage.nodes import NodeRow, list_nodes
from dispatch.storage.postgres import PostgresDatabase
from dispatch.storage.purge import AUDIT, purge
from dispatch.storage.queries import LogQueries
from dispatch.storage.records import (
    AUDIT_CATEGORIES,
    AUDIT_LEVELS,
    EVENT_KINDS,
    AuditCategory,
    AuditEntry,
    AuditLevel,
    EventKind,
    LogRecord,
    MessageEvent,
    Source,
)
from dispatch.storage.schema import LATEST_VERSION, MIGRATIONS, Migration
from dispatch.storage.sqlite import SqliteDatabase, sqlite_path
from dispatch.storage.store import Store, open_store

__all__ = [
    "AUDIT",
    "AUDIT_CATEGORIES",
    "AUDIT_LEVELS",
    "EVENT_KINDS",
    "JOURNAL_NAME",
    "LATEST_VERSION",
    "MIGRATIONS",
    "ApiKeyRecord",
    "ApiKeyStore",
    "AuditCategory",
    "AuditEntry",
    "AuditLevel",
    "Database",
    "DatabaseUnavailableError",
    "EventKind",
    "LogQueries",
    "LogRecord",
    "MessageEvent",
    "MessageLog",
    "Migration",
    "NodeRow",
    "PostgresDatabase",
    "Source",
    "SqlCursor",
    "SqliteDatabase",
    "StopRequest",
    "Store",
    "UnknownApiKeyError",
    "list_nodes",
    "open_store",
    "purge",
    "sqlite_path",
]
