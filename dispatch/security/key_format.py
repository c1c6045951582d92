"""What an API key is (SPEC §4 "Keys", §11): its format, its stored hash, and checking one.

This is the one place that knows the shape of a key. Storage keeps rows whose prefix and
hash are opaque strings to it (``dispatch/storage/api_keys.py``); the verifier
(:mod:`dispatch.security.api_keys`) makes, checks and revokes keys with what is here.

Key format
----------
``dsp_live_`` followed by 32 random bytes (``secrets.token_bytes``) in URL-safe base64
without padding: 43 characters of ``A-Z a-z 0-9 - _``, 52 characters in all, 256 bits of
secret. Base64 rather than base32 keeps the key short and is what HTTP headers and
environment variables carry without quoting. Only the canonical encoding is well formed (the
last character carries 4 bits, its 2 spare bits must be zero), so every key has exactly one
spelling.

The **prefix** is ``dsp_live_`` plus the first 8 characters of the random part (48 bits).
It is stored in clear under a UNIQUE index: it finds the row, names the key in the
CLI and the message log, and is not enough to use the key. A new key whose
prefix is already taken (about one chance in 10^14 per key) is generated again.

Only an argon2id hash of the whole key is stored (SPEC §11). The full key exists in memory
at creation, is returned once, and is never stored or logged.

Key hashes use argon2id with the lightest parameters (:data:`KEY_HASH_PARAMETERS`: one pass
over 64 KiB, ~0.07 ms), not the password profile (three passes over 64 MiB, ~150 ms and 64
MiB of memory per check). A password's hash must be slow because passwords are guessable; a
key is 256 random bits, which no number of guesses reaches however fast each one is, so a
slow hash would add nothing but a way for anyone presenting junk keys to spend the server's
CPU and memory. Keys created before light hashes carry a password-profile hash; the verifier
replaces it with a light one the first time the key is used.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from typing import Final

import argon2

KEY_PREFIX: Final = "dsp_live_"
SECRET_BYTES: Final = 32
SECRET_CHARS: Final = 43  # ceil(32 * 8 / 6): base64 without padding
KEY_LENGTH: Final = len(KEY_PREFIX) + SECRET_CHARS
LOOKUP_CHARS: Final = 8  # 48 bits: collisions are negligible, and retried anyway
PREFIX_LENGTH: Final = len(KEY_PREFIX) + LOOKUP_CHARS

KEY_HASH_PARAMETERS: Final = {"time_cost": 1, "memory_cost": 64, "parallelism": 1}
"""argon2id parameters of key hashes (memory in KiB); see the module docstring."""
_KEY_HASHER: Final = argon2.PasswordHasher(
    time_cost=KEY_HASH_PARAMETERS["time_cost"],
    memory_cost=KEY_HASH_PARAMETERS["memory_cost"],
    parallelism=KEY_HASH_PARAMETERS["parallelism"],
)

_SECRET_SHAPE: Final = re.compile(rf"[A-Za-z0-9_-]{{{SECRET_CHARS}}}")


def new_api_key() -> str:
    """A fresh key: ``dsp_live_`` + 32 random bytes, URL-safe base64 without padding."""
    secret = base64.urlsafe_b64encode(secrets.token_bytes(SECRET_BYTES)).rstrip(b"=")
    return KEY_PREFIX + secret.decode("ascii")


def is_well_formed(presented: str) -> bool:
    """Whether ``presented`` has the shape of a key (prefix, length, alphabet, canonical).

    Cheap and safe on hostile input: the length is checked before anything else.
    """
    if len(presented) != KEY_LENGTH or not presented.startswith(KEY_PREFIX):
        return False
    secret = presented[len(KEY_PREFIX) :]
    if not _SECRET_SHAPE.fullmatch(secret):
        return False
    try:
        raw = base64.urlsafe_b64decode(secret + "=")
    except (binascii.Error, ValueError):
        return False
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") == secret


def prefix_of(key: str) -> str:
    """The lookup prefix of a (well-formed) key."""
    return key[:PREFIX_LENGTH]


def stored_reference(id_or_prefix: int | str) -> int | str:
    """What an operator's reference to a key (an id, a prefix or the full key) names in
    storage: the id, or the prefix. A full key becomes its prefix, so that no full key ever
    reaches a query, a log line or an error message."""
    if isinstance(id_or_prefix, str) and is_well_formed(id_or_prefix.strip()):
        return prefix_of(id_or_prefix.strip())
    return id_or_prefix


def hash_api_key(key: str) -> str:
    """The stored form of ``key``: an argon2id hash with :data:`KEY_HASH_PARAMETERS`."""
    return _KEY_HASHER.hash(key)


def is_light_hash(key_hash: str) -> bool:
    """Whether ``key_hash`` is cheap to check (made by :func:`hash_api_key`, or lighter)."""
    try:
        parameters = argon2.extract_parameters(key_hash)
    except argon2.exceptions.InvalidHashError:
        return False
    return (
        parameters.time_cost <= KEY_HASH_PARAMETERS["time_cost"]
        and parameters.memory_cost <= KEY_HASH_PARAMETERS["memory_cost"]
        and parameters.parallelism <= KEY_HASH_PARAMETERS["parallelism"]
    )


def check_api_key(key_hash: str, key: str) -> bool:
    """Whether ``key`` matches ``key_hash`` (argon2's own constant-time compare).

    Blocking for as long as the hash's parameters say: call it on the event loop only for
    an :func:`is_light_hash`.
    """
    try:
        return _KEY_HASHER.verify(key_hash, key)
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False
