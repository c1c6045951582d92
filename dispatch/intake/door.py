"""The intake door: how a way in other than an SMTP session hands over a message.

Intake owns what accepting a message means: the message is durable in the spool's
``incoming/`` (:meth:`dispatch.spool.IncomingMessage.commit`), the write is counted
(``dispatch_spool_writes_total``, ``dispatch_messages_received_total{source}``) and the
message log gets its ``received`` event. A door that is not an SMTP session — today the HTTP
API — calls :meth:`IntakeDoor.commit` for all three and never touches the spool writer or
:mod:`dispatch.intake.records`; a peer it refuses for its allow-list is written to the log with
:meth:`IntakeDoor.denied`.

One :class:`IntakeDoor` per source, built by the composition root (:mod:`dispatch.daemon`)
and shared by every request of that source. It owns no task and no file: each commit's files
belong to that call until it returns or raises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from dispatch.intake import records
from dispatch.monitoring.stats import Stats
from dispatch.spool import Envelope, Spool, SpoolFullError, SpoolWriteError
from dispatch.storage import MessageEvent, Source

__all__ = ["IntakeDoor", "SpoolFullError", "SpoolWriteError"]


class IntakeDoor:
    """Commits the messages of one ``source`` to ``spool``, counts them and logs them."""

    def __init__(
        self,
        source: Source,
        spool: Spool,
        stats: Stats,
        record: Callable[[MessageEvent], None],
    ) -> None:
        self.source: Source = source
        self._spool = spool
        self._stats = stats
        self._record = record

    @property
    def scratch_directory(self) -> Path:
        """Where a door may stage what it receives before it is a message: the spool's
        ``tmp/``, on the spool's file system (a full disk shows before anything is
        acknowledged), emptied at start-up by spool recovery."""
        return self._spool.directory / "tmp"

    async def commit(
        self,
        message: bytes,
        *,
        mail_from: str,
        recipients: Iterable[str],
        peer_ip: str,
        auth_identity: str | None = None,
        tags: Iterable[str] = (),
        subject: str | None = None,
    ) -> Envelope:
        """Spool ``message`` durably, count it, log its ``received`` event; its envelope.

        Once this returns, the message is the spool's: the caller may acknowledge it. On
        :class:`SpoolFullError` or :class:`SpoolWriteError` nothing is left in the spool and
        the failed write is counted. The count and the event follow the commit without a
        checkpoint between them, so a caller cancelled after the commit (a request
        deadline) still leaves both; the spool's own cancellation rule applies to the commit
        (a duplicate, never a loss).
        """
        try:
            async with self._spool.begin() as incoming:
                await incoming.write(message)
                envelope = await incoming.commit(
                    mail_from=mail_from,
                    recipients=recipients,
                    source=self.source,
                    peer_ip=peer_ip,
                    auth_identity=auth_identity,
                    tags=tags,
                )
                self._stats.spool_writes.add("ok")
                self._stats.messages_received.add(self.source)
                self._record(records.received(envelope, subject=subject))
        except SpoolWriteError as exc:
            self._stats.spool_writes.add("full" if isinstance(exc, SpoolFullError) else "error")
            raise
        return envelope

    def denied(self, peer_ip: str, allow_list: str) -> None:
        """Log the ``denied`` event of ``peer_ip``, refused because it is not in ``allow_list``
        (the setting's name, such as ``api.allowed_cidrs``)."""
        self._record(records.denied(self.source, peer_ip, allow_list))
