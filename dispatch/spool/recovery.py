"""Start-up recovery: repair what a crash left behind, then read the spool once.

Theory of operation
-------------------
Every writer in the spool keeps one invariant (see ``writer.py`` and ``transitions.py``):
**the directory holding ``<id>.json`` is the message's state — for a one-file message,
without a ``.json``, the directory of the ``.eml`` carrying the envelope attribute
(``layout.py``) — and a message without either in a state directory was never acknowledged
or is already finished.** Recovery applies that rule to whatever it finds, per id:

=================================================  =========================================
found                                              done
=================================================  =========================================
anything in ``tmp/``                               deleted (an unfinished write)
``.json`` and ``.eml`` in one state directory      kept (an envelope attribute on the
                                                   ``.eml`` is ignored: the ``.json`` wins)
``.json`` in S, ``.eml`` in T                      ``.eml`` moved to S (an interrupted move)
a one-file ``.eml`` (envelope attribute), no      kept (if there are several: the one in
``.json``                                          failed > incoming > processing; the
                                                   others deleted)
a one-file ``.eml`` shorter or longer than its     **set aside** in ``orphaned/``, warning
envelope's ``size``                                logged: a commit a power cut interrupted
                                                   before its fsync (``writer.py``), never
                                                   acknowledged
``.eml`` without any envelope                      **set aside**, never deleted: moved to
                                                   ``orphaned/<id>.eml`` and counted; one
                                                   warning per start-up (see below)
``.json`` without any ``.eml``                     envelope moved to ``failed/`` with
                                                   ``last_error = "message body missing"``,
                                                   warning logged (someone removed the body)
``.json`` in several state directories             one kept (failed > incoming > processing),
                                                   the others deleted; no writer does this
a message in ``processing/``                       moved back to ``incoming/`` (its worker
                                                   died with the process)
an envelope that does not decode                   left where it is, not indexed, logged as an
                                                   error with its path (an operator decides)
a file whose name is not ``<id>.eml|json``         left alone, logged
=================================================  =========================================

A body without any envelope is what an interrupted removal leaves (the envelope goes first:
``transitions.py``) or a commit that failed before it was acknowledged — but also what a copy
of the spool that dropped extended attributes (plain ``cp``, ``tar`` without ``--xattrs``,
``rsync -a`` without ``-X``, some network file systems) makes of *every* waiting one-file
message. Recovery cannot tell these apart, and deleting would lose acknowledged mail in the
last case, so such bodies go to ``orphaned/`` (created when first needed; a name already
taken there gets a ``.1``, ``.2``... before ``.eml``), and one warning names the directory,
the count and what to do. Retention removes them after ``retention.failed_spool_days``
(``sweep.py``). A body beside another copy of the same id that does carry an envelope is a
duplicate, not an orphan, and is deleted.

Then every envelope is decoded and the entries returned for the index. All of it blocks and
runs in one thread hop from :meth:`Spool.open`; the repairs are made durable with one fsync
per directory at the end.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import attrs

from dispatch.spool.envelope import Envelope
from dispatch.spool.errors import CorruptEnvelopeError
from dispatch.spool.ids import is_valid_id
from dispatch.spool.index import SpoolEntry
from dispatch.spool.layout import (
    DIRECTORY_MODE,
    EML,
    JSON,
    MessageState,
    SpoolLayout,
    attached_envelope,
    fsync_dir,
)
from dispatch.spool.transitions import move_message, replace_envelope

logger = logging.getLogger("dispatch.spool")

BODY_MISSING = "message body missing"

# Envelopes are small; one read gets a typical one whole (a long recipient list takes more).
_READ_SIZE = 16 * 1024

# Which copy wins when an envelope exists in several states (defensive: no writer does it).
_JSON_PRIORITY = (MessageState.FAILED, MessageState.INCOMING, MessageState.PROCESSING)


@attrs.define
class RecoveryReport:
    """What start-up found and repaired; logged once by :meth:`Spool.open`."""

    messages: int = 0
    tmp_files_removed: int = 0
    claims_returned: int = 0
    split_pairs_repaired: int = 0
    orphan_bodies_set_aside: int = 0
    torn_bodies_set_aside: int = 0
    bodiless_envelopes_failed: int = 0
    duplicate_envelopes_removed: int = 0
    corrupt_envelopes: list[Path] = attrs.Factory(list)
    unknown_files: list[Path] = attrs.Factory(list)
    seconds: float = 0.0
    one_fsync_commits: bool = False  # the spool's file system: see durability.py

    def summary(self) -> str:
        """One line for the start-up log."""
        # "the file only": renamed first, then fsynced, which there makes the rename durable
        commits = "the file only" if self.one_fsync_commits else "the file and incoming/"
        return (
            f"{self.messages} messages in {self.seconds:.2f}s (commits fsync {commits}); "
            f"tmp files removed {self.tmp_files_removed}, claims returned "
            f"{self.claims_returned}, split pairs repaired {self.split_pairs_repaired}, "
            f"orphan bodies set aside {self.orphan_bodies_set_aside}, "
            f"torn bodies set aside {self.torn_bodies_set_aside}, "
            f"bodiless envelopes failed "
            f"{self.bodiless_envelopes_failed}, duplicate envelopes removed "
            f"{self.duplicate_envelopes_removed}, corrupt envelopes "
            f"{len(self.corrupt_envelopes)}, unknown files {len(self.unknown_files)}"
        )

    @property
    def repaired_anything(self) -> bool:
        return any(
            (
                self.tmp_files_removed,
                self.claims_returned,
                self.split_pairs_repaired,
                self.orphan_bodies_set_aside,
                self.torn_bodies_set_aside,
                self.bodiless_envelopes_failed,
                self.duplicate_envelopes_removed,
            )
        )


@attrs.define
class _Found:
    json_states: list[MessageState] = attrs.Factory(list)
    eml_states: list[MessageState] = attrs.Factory(list)


def recover(layout: SpoolLayout) -> tuple[list[SpoolEntry], RecoveryReport]:
    """Create missing directories, repair crash leftovers and decode every envelope; the
    report also says whether commits here need one fsync or two (``durability.py``)."""
    started = time.monotonic()
    report = RecoveryReport()
    layout.create_dirs()
    report.one_fsync_commits = layout.file_fsync_covers_rename
    report.tmp_files_removed = _empty_tmp(layout.tmp)
    entries: list[SpoolEntry] = []
    for message_id, found in _scan(layout, report).items():
        settled = _settle(layout, message_id, found, report)
        if settled is None:
            continue
        state, has_body, attached = settled
        entry = _load(
            layout, message_id, state, has_body=has_body, attached=attached, report=report
        )
        if entry is not None:
            entries.append(entry)
    if report.orphan_bodies_set_aside or report.torn_bodies_set_aside:
        # The destination first: a power cut in between then leaves a body in both places
        # (set aside again at the next start), never in neither.
        fsync_dir(layout.orphaned)
    for directory in layout.state_dirs.values():
        fsync_dir(directory)
    if report.orphan_bodies_set_aside:
        _warn_set_aside(layout, report.orphan_bodies_set_aside)
    report.messages = len(entries)
    report.seconds = time.monotonic() - started
    return entries, report


def _empty_tmp(tmp: Path) -> int:
    removed = 0
    with os.scandir(tmp) as listing:
        for item in listing:
            if item.is_dir(follow_symlinks=False):
                shutil.rmtree(item.path)
            else:
                os.unlink(item.path)
            removed += 1
    if removed:
        fsync_dir(tmp)
    return removed


def _scan(layout: SpoolLayout, report: RecoveryReport) -> dict[str, _Found]:
    found: defaultdict[str, _Found] = defaultdict(_Found)
    for state, directory in layout.state_dirs.items():
        with os.scandir(directory) as listing:
            for item in listing:
                stem, dot, suffix = item.name.rpartition(".")
                if dot and is_valid_id(stem) and suffix == "json":
                    found[stem].json_states.append(state)
                elif dot and is_valid_id(stem) and suffix == "eml":
                    found[stem].eml_states.append(state)
                else:
                    report.unknown_files.append(Path(item.path))
                    logger.warning("spool: ignoring unexpected file %s", item.path)
    return found


def _settle(
    layout: SpoolLayout, message_id: str, found: _Found, report: RecoveryReport
) -> tuple[MessageState, bool, bytes | None] | None:
    """Leave the message's files in one state directory.

    Return that state, whether the message has a body and, for a one-file message, its
    envelope attribute; None if it was deleted.
    """
    bodies = found.eml_states
    if not found.json_states:
        return _settle_one_file(layout, message_id, bodies, report)
    state = next(s for s in _JSON_PRIORITY if s in found.json_states)
    for other in found.json_states:
        if other is not state:
            os.unlink(layout.path(other, message_id, JSON))
            report.duplicate_envelopes_removed += 1
            logger.warning("spool: %s had envelopes in several states; kept %s", message_id, state)
    extra_bodies = [s for s in bodies if s is not state]
    if bodies and state not in bodies:
        # An interrupted move: the envelope's directory is the truth.
        os.rename(
            layout.path(extra_bodies.pop(0), message_id, EML), layout.path(state, message_id, EML)
        )
        report.split_pairs_repaired += 1
    for other in extra_bodies:
        os.unlink(layout.path(other, message_id, EML))
    if not bodies:
        return state, False, None
    return _unclaimed(layout, message_id, state, report), True, None


def _settle_one_file(
    layout: SpoolLayout, message_id: str, bodies: list[MessageState], report: RecoveryReport
) -> tuple[MessageState, bool, bytes | None] | None:
    """Bodies without a ``.json``: the first carrying an envelope attribute is the message,
    the others are its duplicates; if none carries one, every body is set aside."""
    ordered = sorted(bodies, key=_JSON_PRIORITY.index)
    kept: tuple[MessageState, bytes] | None = None
    for state in ordered:
        envelope = attached_envelope(layout.path(state, message_id, EML))
        if envelope is not None:
            kept = (state, envelope)
            break
    if kept is None:
        for state in ordered:
            _set_aside(layout, message_id, state)
            report.orphan_bodies_set_aside += 1
        return None
    state, envelope = kept
    for other in ordered:
        if other is not state:
            os.unlink(layout.path(other, message_id, EML))
            report.duplicate_envelopes_removed += 1
    return _unclaimed(layout, message_id, state, report), True, envelope


def _set_aside(layout: SpoolLayout, message_id: str, state: MessageState) -> None:
    """Move a body without any envelope to ``orphaned/``, never over an earlier one."""
    if not layout.orphaned.is_dir():
        layout.orphaned.mkdir(mode=DIRECTORY_MODE, exist_ok=True)
        fsync_dir(layout.root)
    target = layout.orphaned / f"{message_id}{EML}"
    copy = 0
    while target.exists():
        copy += 1
        target = layout.orphaned / f"{message_id}.{copy}{EML}"
    os.rename(layout.path(state, message_id, EML), target)


def _warn_set_aside(layout: SpoolLayout, count: int) -> None:
    logger.warning(
        "spool: %d message bodies had no envelope and were set aside in %s, not delivered. "
        "If this spool was restored from a backup or copied by a tool that drops extended "
        "attributes (plain cp, tar without --xattrs, rsync -a without -X), stop Dispatch and "
        "restore or copy it again keeping them (tar --xattrs, rsync -aX, cp -a) to get these "
        "messages back; otherwise they are bodies of messages already delivered or deleted "
        "whose removal was interrupted, and may be deleted (retention removes them after "
        "retention.failed_spool_days)",
        count,
        layout.orphaned,
    )


def _unclaimed(
    layout: SpoolLayout, message_id: str, state: MessageState, report: RecoveryReport
) -> MessageState:
    """A claimed message goes back to ``incoming/``: its worker died with the process."""
    if state is not MessageState.PROCESSING:
        return state
    move_message(layout, message_id, state, MessageState.INCOMING, durable=False)
    report.claims_returned += 1
    return MessageState.INCOMING


def _load(
    layout: SpoolLayout,
    message_id: str,
    state: MessageState,
    *,
    has_body: bool,
    attached: bytes | None,
    report: RecoveryReport,
) -> SpoolEntry | None:
    # Plain strings and os calls: pathlib would cost more than the decoding on this path.
    path = f"{layout.state_dir_strings[state]}/{message_id}{EML if attached else JSON}"
    try:
        data = _read_file(path) if attached is None else attached
        envelope = Envelope.from_json(data, path=path)
        if envelope.id != message_id:
            raise CorruptEnvelopeError(f"envelope is for {envelope.id}", path=Path(path))
    except CorruptEnvelopeError as exc:
        report.corrupt_envelopes.append(Path(path))
        logger.error("spool: %s; left in place, not delivered until an operator acts", exc)
        return None
    if attached is not None and (length := os.stat(path).st_size) != envelope.size:
        _set_aside(layout, message_id, state)
        report.torn_bodies_set_aside += 1
        logger.warning(
            "spool: message %s is %d bytes where its envelope says %d: a commit cut short by a "
            "power loss before it was acknowledged (see writer.py); set aside in %s, not "
            "delivered",
            message_id,
            length,
            envelope.size,
            layout.orphaned,
        )
        return None
    if has_body:
        return SpoolEntry(state, envelope)
    if state is MessageState.FAILED and envelope.last_error == BODY_MISSING:
        return SpoolEntry(state, envelope)  # parked by an earlier start-up
    logger.warning("spool: message %s has no body (its .eml is gone); moved to failed", message_id)
    envelope = attrs.evolve(envelope, last_error=BODY_MISSING)
    replace_envelope(layout, message_id, state, envelope.to_json())
    if state is not MessageState.FAILED:
        os.rename(path, layout.path(MessageState.FAILED, message_id, JSON))
    report.bodiless_envelopes_failed += 1
    return SpoolEntry(MessageState.FAILED, envelope)


def _read_file(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, _READ_SIZE):
            chunks.append(chunk)
            if len(chunk) < _READ_SIZE:
                break
        return b"".join(chunks)
    finally:
        os.close(fd)


# --- what an intake worker process that died left (while the spool is open) ---------------
# See Spool.adopt_unannounced: the ids are listed twice, some seconds apart, and only those
# still unknown then are read.


def incoming_ids(layout: SpoolLayout) -> list[str]:
    """Ids of the messages in ``incoming/``: every ``.json``, and every ``.eml`` without one
    (a one-file message, or a body whose envelope is being moved: see
    :func:`read_incoming_envelopes`)."""
    ids = set()
    with os.scandir(layout.state_dirs[MessageState.INCOMING]) as listing:
        for item in listing:
            stem, _, suffix = item.name.rpartition(".")
            if suffix in ("json", "eml") and is_valid_id(stem):
                ids.add(stem)
    return sorted(ids)


def read_incoming_envelopes(layout: SpoolLayout, message_ids: Iterable[str]) -> list[Envelope]:
    """The readable envelopes of these incoming messages (gone or corrupt ones are skipped:
    start-up recovery deals with those; a body with neither envelope is skipped quietly)."""
    envelopes = []
    for message_id in message_ids:
        path = layout.path(MessageState.INCOMING, message_id, JSON)
        try:
            try:
                with open(path, "rb") as file:
                    data = file.read()
            except FileNotFoundError:
                path = layout.path(MessageState.INCOMING, message_id, EML)
                attached = attached_envelope(path)
                if attached is None:
                    continue
                data = attached
            envelopes.append(Envelope.from_json(data, path=path))
        except (OSError, CorruptEnvelopeError) as exc:
            logger.warning("spool: cannot adopt %s: %s", message_id, exc)
    return envelopes
