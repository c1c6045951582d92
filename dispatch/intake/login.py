"""SMTP AUTH on the listener (RFC 4954): the PLAIN and LOGIN exchanges against ``listener.users``.

The protocol core only frames the exchange (a 334 makes the next line an ``AuthResponse``);
this module decides the replies. Passwords are checked against argon2 hashes by
:func:`~dispatch.security.passwords.verify_password`, under the process-wide limit on
concurrent verifications: when its wait queue is full the attempt gets :data:`BUSY`
(``454 4.7.0``) at once, and is not counted as a failure. An unknown user costs the same hash
verification as a known one, so timing does not reveal which accounts exist.

Failures are counted in a shared :class:`~dispatch.security.throttle.FailureThrottle` twice:
per peer IP (whatever the username; ``max_failures`` within the window) and per username
(whatever the address; :data:`USERNAME_FAILURES_FACTOR` times as many, so that no single
address can lock an account out, while guesses spread over many addresses are still
stopped). Past either limit the attempt gets ``454`` without its password being looked at:
a throttled address is refused for every user, a throttled username from every address. A
success as user U from address A forgives only the failures at U from A: never guesses at
another user from A, nor guesses at U from elsewhere. Unknown usernames are counted like
known ones, so the throttle does not reveal which accounts exist.

An address or a username that becomes throttled is logged and audited once (category
``Auth``, level ``Warning``; see :mod:`dispatch.storage.audit`), when it is known to be
throttled by failures alone: after a failed verdict, or at a refusal, while none of its
attempts is still being checked. The refusals that follow add nothing to the audit log.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import Final

from dispatch.config.settings import SmtpUser
from dispatch.security.passwords import password_checks, verify_password
from dispatch.security.throttle import FailureThrottle
from dispatch.smtp import Reply, replies
from dispatch.smtp import auth as sasl
from dispatch.smtp.events import Auth, AuthResponse
from dispatch.storage import audit as entries
from dispatch.storage.records import AuditEntry

log = logging.getLogger("dispatch.smtp")

MECHANISMS: Final = ("PLAIN", "LOGIN")
THROTTLED: Final = Reply.of(
    454, "Too many failed authentications, try again later", enhanced="4.7.0"
)
USERNAME_FAILURES_FACTOR: Final = 4
BUSY: Final = Reply.of(
    454, "Too many authentications in progress, try again later", enhanced="4.7.0"
)


def username_key(username: str) -> str:
    """The throttle key of a username: fixed size, however long the name a client sent."""
    return "user:" + hashlib.sha256(username.encode("utf-8", "surrogateescape")).hexdigest()


async def _check(users: tuple[SmtpUser, ...], username: str, password: str) -> bool:
    user = next((u for u in users if u.username == username), None)
    return await verify_password(None if user is None else user.password_hash.reveal(), password)


class SmtpAuthenticator:
    """Owns one session's AUTH exchange: the mechanism in progress and, for LOGIN, the
    username given so far. :attr:`identity` is set after a successful exchange. ``audit``
    receives an entry when this session's attempt throttles its address or username."""

    def __init__(
        self,
        users: tuple[SmtpUser, ...],
        throttle: FailureThrottle,
        peer_ip: str,
        audit: Callable[[AuditEntry], None],
    ):
        self._users = users
        self._throttle = throttle
        self._peer_ip = peer_ip
        self._audit = audit
        self._mechanism: str | None = None
        self._username: str | None = None
        self.identity: str | None = None
        self.failures = 0

    async def start(self, command: Auth) -> Reply:
        """Answer ``AUTH mechanism [initial-response]``."""
        if command.mechanism not in MECHANISMS or not self._users:
            return replies.AUTH_MECHANISM_UNSUPPORTED
        if await self._throttled(self._peer_ip):
            log.warning("AUTH refused: too many failures from %s", self._peer_ip)
            self._report_throttling(None)
            return THROTTLED
        self._mechanism = command.mechanism
        self._username = None
        if command.initial_response is None:
            if self._mechanism == "PLAIN":
                return sasl.PLAIN_CHALLENGE
            return sasl.LOGIN_USERNAME_CHALLENGE
        return await self._step(command.initial_response)

    async def respond(self, response: AuthResponse) -> Reply:
        """Answer one client line inside the exchange."""
        if response.cancelled:
            self._mechanism = None
            return replies.AUTH_CANCELLED
        return await self._step(response.line)

    async def _step(self, line: str) -> Reply:
        try:
            if self._mechanism == "PLAIN":
                credentials = sasl.decode_plain(line)
                if credentials.authzid not in ("", credentials.username):
                    # No acting on behalf of others; a failure at this username all the same.
                    return await self._finish(credentials.username, None)
                return await self._finish(credentials.username, credentials.password)
            if self._username is None:
                self._username = sasl.decode_login(line)
                return sasl.LOGIN_PASSWORD_CHALLENGE
            return await self._finish(self._username, sasl.decode_login(line))
        except sasl.AuthDecodeError as exc:
            self._mechanism = None
            self.failures += 1
            return exc.reply

    async def _throttled(self, address: str, user: str | None = None) -> bool:
        """Whether the address (or the username) is past its limit. While attempts still
        being checked are what puts it there, wait for their verdicts and look again: the
        right password among them forgives its own, so concurrent logins of one application
        are not refused, while concurrent guesses still get no more checks than the limit."""
        throttle = self._throttle
        user_limit = throttle.max_failures * USERNAME_FAILURES_FACTOR
        while throttle.retry_after(address) or (user and throttle.retry_after(user, user_limit)):
            if not (throttle.in_flight(address) or (user and throttle.in_flight(user))):
                return True
            await throttle.wait_for_verdict()
        return False

    async def _finish(self, username: str, password: str | None) -> Reply:
        self._mechanism = None
        address, user = self._peer_ip, username_key(username)
        # Checked again here, and the attempt counted as a failure from its start until its
        # verdict: guesses sent at once on many connections would otherwise all pass the check
        # in `start` before any of them failed, and all be verified (the throttle allows 5).
        if await self._throttled(address, user):
            log.warning("AUTH refused: too many failures from %s or at this user", address)
            self._report_throttling(username)
            return THROTTLED
        if password is not None and password_checks().full():
            # Refused before it is counted: a guess that was never checked is no failure.
            # Nothing awaits between this test and the verification joining the queue, so
            # the queue bound holds exactly.
            log.info("AUTH refused: too many password checks in progress")
            return BUSY
        self._throttle.begin_attempt(address, detail=user)
        self._throttle.begin_attempt(user, detail=address)
        ok = False
        try:
            ok = password is not None and await _check(self._users, username, password)
        finally:
            # A success forgives this user's failures from this address only (module doc).
            self._throttle.end_attempt(address, detail=user, success=ok)
            self._throttle.end_attempt(user, detail=address, success=ok)
        if ok:
            self.identity = username
            return replies.AUTH_SUCCEEDED
        self.failures += 1
        log.warning("AUTH failed from %s", address)
        self._report_throttling(username)
        return replies.AUTH_FAILED

    def _report_throttling(self, username: str | None) -> None:
        """Audit the address, and the username if given, if either has just become
        throttled by failures alone (none of its attempts still being checked)."""
        throttle, address = self._throttle, self._peer_ip
        window = throttle.window
        if not throttle.in_flight(address) and throttle.newly_throttled(address):
            wait = throttle.retry_after(address)
            log.warning("AUTH: %s throttled for %.0f s", address, wait)
            failures = throttle.max_failures
            self._audit(entries.smtp_auth_address_throttled(address, failures, window, wait))
        if username is None:
            return
        user, limit = username_key(username), throttle.max_failures * USERNAME_FAILURES_FACTOR
        if not throttle.in_flight(user) and throttle.newly_throttled(user, limit):
            wait = throttle.retry_after(user, limit)
            log.warning("AUTH: a username throttled for %.0f s (last try from %s)", wait, address)
            self._audit(entries.smtp_auth_user_throttled(username, limit, window, wait, address))
