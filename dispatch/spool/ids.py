"""Spool message ids: ``spl_`` followed by 26 Crockford base32 characters.

The 26 characters encode 128 bits, most significant first: 48 bits of Unix time in
milliseconds, then 80 random bits (the ULID layout). Because the encoding is fixed-width and
the alphabet is in ASCII order, ids sort as strings in the order they were created, which
keeps directory listings, ``spool list`` and the log readable in time order.

Within one process ids are strictly increasing even when many are made in the same
millisecond or the wall clock steps back: the generator then reuses the last timestamp and
increments the random part. The 80 random bits make collisions between processes (or after a
restart with a clock that went back) practically impossible.

Ids also name files, so :func:`is_valid_id` is the gate that keeps user input (an id from the
API, the CLI or a file name found on disk) from ever becoming a path like ``../x``.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections.abc import Callable

PREFIX = "spl_"

# Crockford's base32: digits and upper-case letters without I, L, O and U. Ascending ASCII
# order, so the encoded strings sort like the numbers they encode.
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_ENCODED_LENGTH = 26  # ceil(128 / 5)
_TIME_BITS = 48
_RANDOM_BITS = 80
_RANDOM_MASK = (1 << _RANDOM_BITS) - 1
_MAX_TIME_MS = (1 << _TIME_BITS) - 1

# 26 characters carry 130 bits, so the first one (the top 3 bits) can only be 0-7.
_ID_RE = re.compile(r"spl_[0-7][0-9A-HJKMNP-TV-Z]{25}")

ID_LENGTH = len(PREFIX) + _ENCODED_LENGTH


def _encode(value: int) -> str:
    chars = []
    for _ in range(_ENCODED_LENGTH):
        chars.append(_ALPHABET[value & 0x1F])
        value >>= 5
    return "".join(reversed(chars))


def _decode(text: str) -> int:
    value = 0
    for char in text:
        value = (value << 5) | _ALPHABET.index(char)
    return value


class IdGenerator:
    """Makes ids that are unique and strictly increasing for the life of the generator.

    Thread-safe: the spool may make ids on the Trio thread while tests make them in threads.
    """

    def __init__(self, clock_ns: Callable[[], int] = time.time_ns) -> None:
        """``clock_ns`` returns Unix time in nanoseconds (tests pass a clock that steps back)."""
        self._clock_ns = clock_ns
        self._lock = threading.Lock()
        self._last_ms = -1
        self._last_random = 0

    def new_id(self) -> str:
        """Return a new id, greater than every id this generator returned before."""
        now_ms = self._clock_ns() // 1_000_000
        with self._lock:
            if now_ms > self._last_ms:
                self._last_ms = now_ms
                self._last_random = secrets.randbits(_RANDOM_BITS)
            elif self._last_random < _RANDOM_MASK:
                # Same millisecond (or the clock stepped back): stay on the last timestamp
                # and count up, so the order of creation is kept.
                self._last_random += 1
            else:
                # 2**80 ids in one millisecond: borrow the next millisecond.
                self._last_ms += 1
                self._last_random = secrets.randbits(_RANDOM_BITS - 1)
            if self._last_ms > _MAX_TIME_MS:  # the year 10889
                raise OverflowError("id timestamp overflows 48 bits")
            value = (self._last_ms << _RANDOM_BITS) | self._last_random
        return PREFIX + _encode(value)


_default_generator = IdGenerator()


def new_id() -> str:
    """Return a new message id from the process-wide generator (monotonic in this process)."""
    return _default_generator.new_id()


def is_valid_id(value: object) -> bool:
    """Tell whether ``value`` is a well-formed message id (and therefore safe as a file name)."""
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None


def check_id(value: object) -> str:
    """Return ``value`` if it is a well-formed id, else raise :class:`ValueError` naming it."""
    if not is_valid_id(value):
        raise ValueError(
            f"{value!r} is not a spool message id (expected {PREFIX} and 26 base32 characters)"
        )
    assert isinstance(value, str)
    return value


def id_timestamp(message_id: str) -> float:
    """Return the creation time encoded in a valid id, as Unix seconds (millisecond precision)."""
    value = _decode(check_id(message_id)[len(PREFIX) :])
    return (value >> _RANDOM_BITS) / 1000.0
