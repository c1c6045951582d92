"""Password hashes (argon2id) for SMTP AUTH users and API keys of earlier versions.

Verifying an argon2 hash costs ~150 ms of CPU and, with argon2-cffi's default profile,
64 MiB of memory for as long as it runs: unbounded, sixty guesses at once would take the
daemon from ~100 MB to 2.6 GB and starve ``/health``. So every verification runs in a worker
thread under one process-wide :class:`PasswordChecks`: at most :attr:`PasswordChecks.slots`
at a time (sized to the machine, :func:`machine_slots`), and at most
:attr:`PasswordChecks.queue` more waiting for a slot. A caller that must not wait past that
bound (SMTP AUTH: ``454 4.7.0``) asks :func:`verify_password` with ``refuse_when_busy=True``
and gets :class:`ChecksBusy`.

A hash of ``None`` means "no such account": the same work is done against a decoy hash and
the answer is False, so timing does not reveal which accounts exist.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Final

import argon2
import trio

_HASHER: Final = argon2.PasswordHasher()
MEMORY_SHARE: Final = 4
"""Verifications may use at most 1/4 of the memory available at start: the rest is the
daemon's (spool buffers, sessions, the database) and the machine's."""
QUEUE_PER_SLOT: Final = 8
"""Waiting attempts allowed per slot: at 150-250 ms each, the last in the queue waits about
two seconds, well inside any client's AUTH timeout, and a pool of a few connections of one
application logging in at once is never refused."""


def hash_password(password: str) -> str:
    """An argon2id hash in PHC string form (``$argon2id$v=19$...``)."""
    return _HASHER.hash(password)


def check_password(password_hash: str, password: str) -> bool:
    """Constant-time verification (argon2's own compare); False for a wrong or bad hash."""
    try:
        return _HASHER.verify(password_hash, password)
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False


@functools.cache
def _decoy_hash() -> str:
    return hash_password("an account that does not exist")


def _check_or_decoy(password_hash: str | None, password: str) -> bool:
    if password_hash is None:
        check_password(_decoy_hash(), password)
        return False
    return check_password(password_hash, password)


def _available_memory() -> int | None:
    """``MemAvailable`` from ``/proc/meminfo`` in bytes; None where there is no such file."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def machine_slots() -> int:
    """Concurrent verifications this machine affords, at least 1: min(cores / the threads one
    verification runs, available memory / (4 x the memory one verification takes)).

    Both per verification are those of argon2-cffi's default profile (4 threads, 64 MiB),
    which ``hash-password`` uses. One verification already keeps 4 cores busy, so running
    more at once than cores / 4 would not check passwords faster; it would only take CPU
    time from the event loop (and ``/health``).
    """
    cores = os.process_cpu_count() or 1
    by_cpu = cores // _HASHER.parallelism
    memory = _available_memory()
    per_check = _HASHER.memory_cost * 1024  # KiB → bytes
    by_memory = by_cpu if memory is None else memory // (MEMORY_SHARE * per_check)
    return max(1, min(by_cpu, by_memory))


class ChecksBusy(Exception):
    """Every verification slot is taken and the wait queue is full: refuse the attempt now."""


class PasswordChecks:
    """Owns the limit on concurrent verifications of one process (see the module docstring).

    :meth:`verify` waits for a slot, then runs argon2 in a worker thread that holds the slot
    until it ends. Cancelled while waiting, it leaves the queue at once; cancelled while the
    thread runs, it waits for the thread (at most one verification) so that the slot count
    stays true.
    """

    def __init__(self, slots: int, queue: int) -> None:
        self.slots = slots
        self.queue = queue
        self._limiter = trio.CapacityLimiter(slots)

    @property
    def in_flight(self) -> int:
        return int(self._limiter.borrowed_tokens)

    @property
    def waiting(self) -> int:
        return self._limiter.statistics().tasks_waiting

    def full(self) -> bool:
        """True when one more attempt would have to wait beyond the queue bound."""
        return self.in_flight + self.waiting >= self.slots + self.queue

    async def verify(self, password_hash: str | None, password: str) -> bool:
        return await trio.to_thread.run_sync(
            _check_or_decoy, password_hash, password, limiter=self._limiter
        )


_checks: PasswordChecks | None = None


def share_among(processes: int) -> PasswordChecks:
    """Size this process's :class:`PasswordChecks` as its share of the machine, when
    ``processes`` processes (the daemon and its intake workers) verify passwords."""
    global _checks  # one limit per process, like the thread pool it bounds
    slots = math.ceil(machine_slots() / max(1, processes))
    _checks = PasswordChecks(slots, queue=slots * QUEUE_PER_SLOT)
    return _checks


def password_checks() -> PasswordChecks:
    """This process's :class:`PasswordChecks` (the whole machine's, unless shared out)."""
    return _checks if _checks is not None else share_among(1)


async def verify_password(
    password_hash: str | None, password: str, *, refuse_when_busy: bool = False
) -> bool:
    """Check ``password`` against ``password_hash`` (None: no such account) under the
    process-wide limit, never on the event loop.

    ``refuse_when_busy``: raise :class:`ChecksBusy` at once instead of joining a full queue.
    Without it the caller waits its turn however long the queue (memory stays bounded either
    way; the queue bound is about answering promptly).
    """
    checks = password_checks()
    if refuse_when_busy and checks.full():
        raise ChecksBusy
    return await checks.verify(password_hash, password)
