"""Password hashes (argon2id) for SMTP AUTH users, the dashboard admin and API keys.

Verifying an argon2 hash costs ~150 ms of CPU here, so async callers use
:func:`verify_password` which runs it in a worker thread, never on the event loop.
"""

from __future__ import annotations

from typing import Final

import argon2
import trio

_HASHER: Final = argon2.PasswordHasher()


def hash_password(password: str) -> str:
    """An argon2id hash in PHC string form (``$argon2id$v=19$...``)."""
    return _HASHER.hash(password)


def check_password(password_hash: str, password: str) -> bool:
    """Constant-time verification (argon2's own compare); False for a wrong or bad hash."""
    try:
        return _HASHER.verify(password_hash, password)
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False


async def verify_password(password_hash: str, password: str) -> bool:
    """:func:`check_password` in a worker thread, so the event loop never blocks on it."""
    return await trio.to_thread.run_sync(check_password, password_hash, password)
