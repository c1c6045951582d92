"""Random operation sequences with crashes never lose or duplicate a message.

Hypothesis's state machine is synchronous, so each rule drives the real async spool with
one ``trio.run``. That is sound because a :class:`Spool` keeps no Trio state alive between
operations (no tasks, no open files) — which is also what lets a "crash" be modelled by
dropping the object and opening the directory again. Besides clean crashes between
operations, some rules leave the disk exactly as a crash *inside* an operation would (the
intermediate states that ``transitions.py`` and ``writer.py`` document) and then reopen.

After every step the disk must hold exactly the model's messages, each whole in one state
directory with its original bytes, and the index must agree with the disk.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from dispatch.spool import Envelope, MessageState, Spool, WrongStateError, new_id
from dispatch.spool.layout import ENVELOPE_XATTR, SpoolLayout
from dispatch.spool.testing import commit, placed, tmp_files
from dispatch.spool.transitions import replace_envelope

INCOMING, PROCESSING, FAILED = (
    MessageState.INCOMING,
    MessageState.PROCESSING,
    MessageState.FAILED,
)
FAR_FUTURE = 4e9


def run[T](fn: Callable[[], Awaitable[T]]) -> T:
    return trio.run(fn)


class SpoolMachine(RuleBasedStateMachine):
    base: Path  # set by the test: where each run makes its spool directory

    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(dir=self.base)) / "spool"
        self.layout = SpoolLayout(self.root)
        self.spool = run(lambda: Spool.open(self.root))
        self.model: dict[str, MessageState] = {}
        self.bodies: dict[str, bytes] = {}

    def ids_in(self, state: MessageState) -> list[str]:
        return sorted(i for i, s in self.model.items() if s is state)

    def has(self, state: MessageState) -> bool:
        return state in self.model.values()

    def reopen(self) -> None:
        """The process dies; a new one opens the same directory."""
        self.spool = run(lambda: Spool.open(self.root))
        for message_id, state in self.model.items():
            if state is PROCESSING:
                self.model[message_id] = INCOMING

    # -- operations ---------------------------------------------------------------------

    # 200 recipients make an envelope too long for an attribute: the pair form (.eml + .json)
    @rule(body=st.binary(max_size=300), rcpts=st.sampled_from([1, 2, 3, 200]))
    def commit(self, body: bytes, rcpts: int) -> None:
        recipients = [f"recipient-{i}@example.test" for i in range(rcpts)]
        envelope = run(lambda: commit(self.spool, body, recipients=recipients, chunk_size=64))
        assert envelope.id not in self.model
        self.model[envelope.id] = INCOMING
        self.bodies[envelope.id] = body

    @precondition(lambda self: self.has(INCOMING))
    @rule(data=st.data())
    def claim(self, data: st.DataObject) -> None:
        message_id = data.draw(st.sampled_from(self.ids_in(INCOMING)))
        run(lambda: self.spool.claim(message_id))
        self.model[message_id] = PROCESSING

    @rule(limit=st.integers(min_value=1, max_value=4))
    def claim_due(self, limit: int) -> None:
        claimed = run(lambda: self.spool.claim_due(limit, now=FAR_FUTURE))
        assert len(claimed) == min(limit, len(self.ids_in(INCOMING)))
        for envelope in claimed:
            assert self.model[envelope.id] is INCOMING
            self.model[envelope.id] = PROCESSING

    @precondition(lambda self: self.has(PROCESSING))
    @rule(data=st.data(), delay=st.floats(min_value=0, max_value=1e6))
    def release(self, data: st.DataObject, delay: float) -> None:
        message_id = data.draw(st.sampled_from(self.ids_in(PROCESSING)))
        envelope = self.spool.get(message_id).envelope
        update = envelope.after_attempt(next_attempt_at=1e9 + delay, error="421 later")
        run(lambda: self.spool.release(update))
        self.model[message_id] = INCOMING

    @precondition(lambda self: self.has(PROCESSING))
    @rule(data=st.data())
    def mark_failed(self, data: st.DataObject) -> None:
        message_id = data.draw(st.sampled_from(self.ids_in(PROCESSING)))
        envelope = self.spool.get(message_id).envelope
        update = envelope.after_attempt(next_attempt_at=0.0, error="550 no")
        run(lambda: self.spool.mark_failed(update))
        self.model[message_id] = FAILED

    @precondition(lambda self: self.has(PROCESSING))
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        message_id = data.draw(st.sampled_from(self.ids_in(PROCESSING)))
        run(lambda: self.spool.remove(message_id))
        del self.model[message_id]

    @precondition(lambda self: self.has(FAILED))
    @rule(data=st.data())
    def retry_failed(self, data: st.DataObject) -> None:
        message_id = data.draw(st.sampled_from(self.ids_in(FAILED)))
        run(lambda: self.spool.retry_failed(message_id))
        self.model[message_id] = INCOMING

    @precondition(lambda self: self.has(INCOMING) or self.has(FAILED))
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        message_id = data.draw(st.sampled_from(self.ids_in(INCOMING) + self.ids_in(FAILED)))
        run(lambda: self.spool.delete(message_id))
        del self.model[message_id]

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def operation_in_the_wrong_state_changes_nothing(self, data: st.DataObject) -> None:
        message_id = data.draw(st.sampled_from(sorted(self.model)))
        wrong = {
            INCOMING: lambda: self.spool.remove(message_id),
            PROCESSING: lambda: self.spool.delete(message_id),
            FAILED: lambda: self.spool.claim(message_id),
        }[self.model[message_id]]
        try:
            run(wrong)
        except WrongStateError:
            pass
        else:
            raise AssertionError("operation in the wrong state succeeded")

    # -- crashes ------------------------------------------------------------------------

    @rule()
    def crash_between_operations(self) -> None:
        self.reopen()

    @rule(body=st.binary(max_size=100))
    def crash_inside_commit(self, body: bytes) -> None:
        # Pair form: body renamed into incoming/, envelope still in tmp/: never acknowledged.
        message_id = new_id()
        (self.root / "incoming" / f"{message_id}.eml").write_bytes(body)
        (self.root / "tmp" / f"{message_id}.json").write_bytes(b"{}")
        self.reopen()

    @rule(body=st.binary(max_size=100))
    def crash_inside_one_file_commit(self, body: bytes) -> None:
        # One file: written with its envelope attribute, not yet renamed out of tmp/.
        message_id = new_id()
        path = self.root / "tmp" / f"{message_id}.eml"
        path.write_bytes(body)
        os.setxattr(path, ENVELOPE_XATTR, b"{}")
        self.reopen()

    @precondition(lambda self: self.has(INCOMING))
    @rule(data=st.data())
    def crash_inside_claim(self, data: st.DataObject) -> None:
        message_id = data.draw(st.sampled_from(self.ids_in(INCOMING)))
        os.rename(
            self.layout.path(INCOMING, message_id, ".eml"),
            self.layout.path(PROCESSING, message_id, ".eml"),
        )
        self.reopen()  # the model keeps it incoming

    @precondition(lambda self: self.has(PROCESSING))
    @rule(data=st.data(), to_failed=st.booleans())
    def crash_inside_release_or_fail(self, data: st.DataObject, to_failed: bool) -> None:
        message_id = data.draw(st.sampled_from(self.ids_in(PROCESSING)))
        envelope: Envelope = self.spool.get(message_id).envelope
        update = envelope.after_attempt(next_attempt_at=0.0, error="crashed")
        replace_envelope(self.layout, message_id, PROCESSING, update.to_json())
        os.rename(
            self.layout.path(PROCESSING, message_id, ".eml"),
            self.layout.path(FAILED if to_failed else INCOMING, message_id, ".eml"),
        )
        self.reopen()  # the envelope was still in processing/: returned to incoming

    @precondition(lambda self: self.has(PROCESSING))
    @rule(data=st.data())
    def crash_inside_remove(self, data: st.DataObject) -> None:
        message_id = data.draw(st.sampled_from(self.ids_in(PROCESSING)))
        envelope = Path(self.layout.path(PROCESSING, message_id, ".json"))
        if envelope.exists():
            envelope.unlink()
        else:  # one file: the body carries the envelope, and removing it is the whole step
            Path(self.layout.path(PROCESSING, message_id, ".eml")).unlink()
        self.reopen()
        del self.model[message_id]

    # -- the promise --------------------------------------------------------------------

    @invariant()
    def disk_index_and_model_agree(self) -> None:
        assert placed(self.root) == self.model
        assert tmp_files(self.root) == []
        assert {e.id: e.state for e in self.spool.entries()} == self.model
        counts = self.spool.counts()
        assert counts.incoming == len(self.ids_in(INCOMING))
        assert counts.processing == len(self.ids_in(PROCESSING))
        assert counts.failed == len(self.ids_in(FAILED))
        for message_id, state in self.model.items():
            body = Path(self.layout.path(state, message_id, ".eml")).read_bytes()
            assert body == self.bodies[message_id]


def test_random_operations_and_crashes_never_lose_or_duplicate(tmp_path: Path) -> None:
    machine = type("Machine", (SpoolMachine,), {"base": tmp_path})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=60,
            stateful_step_count=30,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
