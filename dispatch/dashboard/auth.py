"""Dashboard sessions and CSRF tokens (SPEC §8, §11): what a signed-in browser holds.

A session is a random token (32 bytes, URL-safe base64) in the cookie
:data:`SESSION_COOKIE`; the database keeps only its SHA-256 (``sessions.token_hash``), so a
copy of the database signs nobody in. A plain hash suffices: the token has 256 random bits,
nothing to guess; a slow hash is for passwords.

Expiry: a session ends after :data:`IDLE_SECONDS` (12 h) without a request, and in any case
:data:`ABSOLUTE_SECONDS` (7 days) after the login. ``sessions.expires_at`` is the earlier of
the two; it moves forward as the session is used, at most once per
:data:`EXTEND_EVERY_SECONDS` (one small write a minute, not one per request). Setting or
changing the admin password ends every session (``AdminStore.set_password_hash``).

Cookies (all ``HttpOnly; Secure; SameSite=Strict; Path=/`` and named with the ``__Host-``
prefix, so the browser refuses them unless set over HTTPS by this host for the whole site):

- :data:`SESSION_COOKIE`: the session token; a session cookie in the browser's sense (no
  ``Max-Age``), the server's expiry being the one that counts;
- :data:`FORM_COOKIE`: a random token for the two forms used before a session exists (login
  and first-run setup). Their hidden ``csrf_token`` field must equal it (the double-submit
  pattern): a page on another site can neither read nor set it.

After login every state-changing request must carry the session's own CSRF token
(``sessions.csrf_token``), in a form field ``csrf_token`` or the ``X-CSRF-Token`` header;
the check is in :mod:`dispatch.dashboard.gate`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Final

import attrs

from dispatch.storage.admin import AdminStore, SessionRow

SESSION_COOKIE: Final = "__Host-dispatch_session"
FORM_COOKIE: Final = "__Host-dispatch_form"
CSRF_FIELD: Final = "csrf_token"
CSRF_HEADER: Final = "X-CSRF-Token"
IDLE_SECONDS: Final = 12 * 3600.0
ABSOLUTE_SECONDS: Final = 7 * 86_400.0
EXTEND_EVERY_SECONDS: Final = 60.0
MIN_PASSWORD_LENGTH: Final = 12
MAX_PASSWORD_LENGTH: Final = 1024  # argon2 takes any length; a bound keeps requests small


def new_token() -> str:
    """A fresh random token (256 bits) for a cookie or a form."""
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """What the database keeps of a session token."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def same_token(given: str | None, expected: str | None) -> bool:
    """Constant-time comparison; False when either is missing or empty."""
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8"))


def password_problem(password: str, again: str | None = None) -> str | None:
    """Why ``password`` cannot be the admin password, or ``None`` when it can."""
    if again is not None and password != again:
        return "The two passwords differ: type the same password twice."
    if len(password) < MIN_PASSWORD_LENGTH:
        return (
            f"The password has {len(password)} characters; use at least "
            f"{MIN_PASSWORD_LENGTH} (a few words are easier to remember than symbols)."
        )
    if len(password) > MAX_PASSWORD_LENGTH:
        return f"The password is longer than {MAX_PASSWORD_LENGTH} characters."
    return None


@attrs.frozen
class Session:
    """A signed-in browser's session, as the pages see it (no token, only its CSRF token)."""

    csrf_token: str
    created_at: float
    expires_at: float


class Sessions:
    """Begins, finds, extends and ends sessions in ``admin`` (the store's ``AdminStore``).
    Holds no state of its own."""

    def __init__(self, admin: AdminStore) -> None:
        self._admin = admin

    async def begin(self, *, now: float | None = None) -> tuple[str, Session]:
        """A new session: the cookie's token (given to the browser, never stored) and the
        session."""
        at = time.time() if now is None else now
        token = new_token()
        row = SessionRow(
            token_hash=token_hash(token),
            created_at=at,
            expires_at=at + min(IDLE_SECONDS, ABSOLUTE_SECONDS),
            csrf_token=new_token(),
        )
        await self._admin.create_session(row)
        return token, Session(row.csrf_token, row.created_at, row.expires_at)

    async def find(
        self, token: str | None, *, now: float | None = None, extend: bool = True
    ) -> Session | None:
        """The live session of a cookie's token (extended when due), or ``None``.

        ``extend=False`` for requests a page makes by itself (live updates): an Overview left
        open must not keep its session alive past the idle limit."""
        if not token:
            return None
        at = time.time() if now is None else now
        hashed = token_hash(token)
        row = await self._admin.find_session(hashed, now=at)
        if row is None:
            return None
        wanted = min(at + IDLE_SECONDS, row.created_at + ABSOLUTE_SECONDS)
        expires_at = row.expires_at
        if extend and wanted - expires_at >= EXTEND_EVERY_SECONDS:
            await self._admin.extend_session(hashed, wanted)
            expires_at = wanted
        return Session(row.csrf_token, row.created_at, expires_at)

    async def end(self, token: str | None) -> bool:
        """End the session of this token (logout); whether there was one."""
        if not token:
            return False
        return await self._admin.end_session(token_hash(token))
