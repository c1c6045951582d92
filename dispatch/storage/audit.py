"""Every kind of audit log entry, each built by one function here (SPEC §7, §11).

The audit log says who did what to the configuration, the API keys, the relays, the spool
and the logins. Components do not build :class:`AuditEntry` values themselves: they call
the function for their kind and hand the result to the ``audit`` callable the composition
root gave them (:meth:`MessageLog.audit` in the daemon: it never blocks, and while the
database is down the entry waits in the journal like any message-log row). So the category,
the severity and the wording of each kind are decided here, in one place:

========================  ==========  =======  ==============================================
kind                      category    level    written by
========================  ==========  =======  ==============================================
daemon started / stopping System      Notice   the composition root
config reloaded           Config      Notice   the supervisor (SIGHUP; Info without a file)
config reload rejected    Config      Warning  the supervisor (SIGHUP)
API key created           ApiKey      Notice   ``ApiKeyVerifier.create`` (CLI, dashboard)
API key revoked           ApiKey      Notice   ``ApiKeyVerifier.revoke`` (Info if it already was)
API key rate-limited      ApiKey      Notice   the API gate, once per episode
API key failures          Auth        Warning  ``ApiKeyVerifier``: a source throttled for bad keys
SMTP AUTH throttled       Auth        Warning  ``intake/login.py``: an address, or a username
admin password set        Auth        Notice   the dashboard's first-run page, the CLI
dashboard login           Auth        Notice   the dashboard (a session begins)
dashboard login failed    Auth        Warning  the dashboard (a wrong password)
dashboard login throttled Auth        Warning  the dashboard, once per episode
dashboard logout          Auth        Info     the dashboard (a session ends)
spool retry / flush       System      Notice   control socket, or the CLI without a daemon
spool delete              System      Notice   control socket, or the CLI without a daemon
relay suspended           Relay       Warning  the relay (connections timed out)
relay resumed             Relay       Info     the relay (a trial connection worked)
relay test sent           Relay       Notice   the dashboard's Relays page
captured mail released    System      Notice   the dashboard's Local inbox
captured mail deleted     System      Notice   the dashboard's Local inbox
certificate regenerated   Config      Notice   the dashboard's Settings page
retention run (purge now) System      Notice   the dashboard's Settings page
========================  ==========  =======  ==============================================

Levels: ``Info`` for routine facts, ``Notice`` for changes an operator made or should know
about, ``Warning`` for what may be an attack or an outage. Throttles are written
once when a key becomes throttled, never once per refused attempt (see
:meth:`dispatch.security.throttle.FailureThrottle.newly_throttled`).

Nothing secret is ever written: configuration changes are listed by key name only, never by
value, and an API key appears by its public prefix. Text a peer chose (an SMTP username, an
upstream's reply) is made printable and cut to :data:`PEER_TEXT_CHARS` characters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final, Protocol

from dispatch.config.live import ReloadResult
from dispatch.logs import printable
from dispatch.storage.records import AuditEntry

PEER_TEXT_CHARS: Final = 100
MAX_KEYS_LISTED: Final = 40
"""Configuration keys named in one reload entry; a longer list ends with "and N more"."""


def _peer_text(text: str) -> str:
    cut = text[:PEER_TEXT_CHARS]
    return printable(cut) + ("…" if len(text) > PEER_TEXT_CHARS else "")


def _keys(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:MAX_KEYS_LISTED])
    more = len(keys) - MAX_KEYS_LISTED
    return shown + (f" and {more} more" if more > 0 else "")


def _seconds(seconds: float) -> str:
    return f"{max(1, round(seconds))} s"


# -- the daemon ---------------------------------------------------------------------------


def daemon_started(version: str, config: str | None, pid: int) -> AuditEntry:
    """Every component is ready; ``config`` is the configuration file (None: defaults)."""
    source = f"configuration file {config}" if config else "built-in defaults"
    return AuditEntry(
        category="System",
        level="Notice",
        message=f"Dispatch {version} started (pid {pid}) with {source}",
        actor="dispatch",
    )


def daemon_stopping(version: str, pid: int) -> AuditEntry:
    """A stop was requested; written then, while the log writer still runs."""
    return AuditEntry(
        category="System",
        level="Notice",
        message=f"Dispatch {version} stopping (pid {pid})",
        actor="dispatch",
    )


# -- configuration ------------------------------------------------------------------------


def config_reloaded(
    path: str, changed: Sequence[str], needs_restart: Sequence[str], *, actor: str
) -> AuditEntry:
    """A reload read ``path``: ``changed`` live keys now apply, ``needs_restart`` keys
    changed in the file but wait for a restart. Key names only, never values."""
    parts = [f"applied {_keys(changed)}" if changed else "no live key changed"]
    if needs_restart:
        parts.append(f"changed but needing a restart: {_keys(needs_restart)}")
    return AuditEntry(
        category="Config",
        level="Notice",
        message=f"configuration reloaded from {path}: {'; '.join(parts)}",
        actor=actor,
    )


def config_reload(result: ReloadResult, *, actor: str) -> AuditEntry:
    """The entry for a reload's result: reloaded, rejected, or nothing to read."""
    if result.path is None:
        return AuditEntry(
            category="Config",
            level="Info",
            message="reload requested, but Dispatch runs on built-in defaults: nothing to read",
            actor=actor,
        )
    if result.problems:
        return config_reload_rejected(str(result.path), len(result.problems), actor=actor)
    return config_reloaded(str(result.path), result.changed, result.needs_restart, actor=actor)


def config_reload_rejected(path: str, problems: int, *, actor: str) -> AuditEntry:
    """A reload found ``path`` invalid and kept the running configuration."""
    plural = "" if problems == 1 else "s"
    return AuditEntry(
        category="Config",
        level="Warning",
        message=(
            f"configuration reload from {path} rejected ({problems} problem{plural}, listed in "
            "the daemon log): the running configuration is kept"
        ),
        actor=actor,
    )


# -- API keys -----------------------------------------------------------------------------


class KeyLabel(Protocol):
    """What an API key entry names of a key (an ``ApiKeyRecord`` is one)."""

    @property
    def id(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def prefix(self) -> str: ...
    @property
    def created_at(self) -> float: ...


def _label(record: KeyLabel) -> str:
    return f"API key {record.id} {record.name!r} ({record.prefix})"


def api_key_created(record: KeyLabel, *, actor: str) -> AuditEntry:
    return AuditEntry(
        category="ApiKey",
        level="Notice",
        message=f"{_label(record)} created",
        actor=actor,
        at=record.created_at,
    )


def api_key_revoked(record: KeyLabel, *, first_time: bool, actor: str, at: float) -> AuditEntry:
    """A revocation; ``first_time`` False: it already was revoked (logged, nothing changed)."""
    what = "revoked" if first_time else "revoked again (it already was: no change)"
    return AuditEntry(
        category="ApiKey",
        level="Notice" if first_time else "Info",
        message=f"{_label(record)} {what}",
        actor=actor,
        at=at,
    )


def api_key_rate_limited(prefix: str, limit: int, retry_after: float, peer: str) -> AuditEntry:
    """A valid key reached ``api.rate_limit_per_key``: its requests get ``429`` for a while."""
    return AuditEntry(
        category="ApiKey",
        level="Notice",
        message=(
            f"API key {prefix} reached api.rate_limit_per_key ({limit} requests per minute): "
            f"its requests get 429 for the next {_seconds(retry_after)}"
        ),
        actor=peer,
    )


def api_key_failures_throttled(
    peer: str, failures: int, window: float, retry_after: float
) -> AuditEntry:
    """A source presented ``failures`` bad API keys within ``window`` seconds."""
    return AuditEntry(
        category="Auth",
        level="Warning",
        message=(
            f"HTTP API: {peer} throttled after {failures} bad API keys within {_seconds(window)}: "
            f"its bad keys get 429 for the next {_seconds(retry_after)} (valid keys still pass)"
        ),
        actor=peer,
    )


class ApiKeyAudit:
    """What the API key verifier reports (its ``KeyAudit``: security imports no storage), as
    the entries above, handed to ``audit`` (``MessageLog.audit`` in the daemon)."""

    def __init__(self, audit: Callable[[AuditEntry], None]) -> None:
        self._audit = audit

    def created(self, record: KeyLabel, *, actor: str) -> None:
        self._audit(api_key_created(record, actor=actor))

    def revoked(self, record: KeyLabel, *, first_time: bool, actor: str, at: float) -> None:
        self._audit(api_key_revoked(record, first_time=first_time, actor=actor, at=at))

    def throttled(self, source_ip: str, failures: int, window: float, retry_after: float) -> None:
        self._audit(api_key_failures_throttled(source_ip, failures, window, retry_after))


# -- SMTP AUTH ----------------------------------------------------------------------------


def smtp_auth_address_throttled(
    peer: str, failures: int, window: float, retry_after: float
) -> AuditEntry:
    """An address failed SMTP AUTH ``failures`` times within ``window`` seconds."""
    return AuditEntry(
        category="Auth",
        level="Warning",
        message=(
            f"SMTP AUTH: {peer} throttled after {failures} failed attempts within "
            f"{_seconds(window)}: AUTH from it is refused (454) for the next "
            f"{_seconds(retry_after)}"
        ),
        actor=peer,
    )


def smtp_auth_user_throttled(
    username: str, failures: int, window: float, retry_after: float, peer: str
) -> AuditEntry:
    """A username failed ``failures`` times within ``window`` seconds, from any addresses;
    ``peer`` made the last attempt."""
    return AuditEntry(
        category="Auth",
        level="Warning",
        message=(
            f"SMTP AUTH: user '{_peer_text(username)}' throttled after {failures} failed "
            f"attempts within {_seconds(window)} (the last from {peer}): AUTH as this user is "
            f"refused (454) from every address for the next {_seconds(retry_after)}"
        ),
        actor=peer,
    )


# -- the dashboard ------------------------------------------------------------------------


def admin_password_set(*, first_time: bool, actor: str) -> AuditEntry:
    """The dashboard's admin password was set (``first_time``: on first run) or changed;
    every dashboard session has ended."""
    what = "set (first run)" if first_time else "changed; every dashboard session ended"
    return AuditEntry(
        category="Auth", level="Notice", message=f"dashboard admin password {what}", actor=actor
    )


def dashboard_login(peer: str) -> AuditEntry:
    """The admin signed in to the dashboard from ``peer``."""
    return AuditEntry(
        category="Auth",
        level="Notice",
        message=f"dashboard: admin signed in from {peer}",
        actor=peer,
    )


def dashboard_login_failed(peer: str) -> AuditEntry:
    """A wrong admin password from ``peer`` (at most the throttle's limit per window)."""
    return AuditEntry(
        category="Auth",
        level="Warning",
        message=f"dashboard: wrong admin password from {peer}",
        actor=peer,
    )


def dashboard_login_throttled(
    peer: str, failures: int, window: float, retry_after: float
) -> AuditEntry:
    """``peer`` gave ``failures`` wrong passwords within ``window`` seconds."""
    return AuditEntry(
        category="Auth",
        level="Warning",
        message=(
            f"dashboard: {peer} throttled after {failures} wrong passwords within "
            f"{_seconds(window)}: its logins get 429 for the next {_seconds(retry_after)}"
        ),
        actor=peer,
    )


def dashboard_logout(peer: str) -> AuditEntry:
    """The admin signed out of the dashboard from ``peer``."""
    return AuditEntry(
        category="Auth",
        level="Info",
        message=f"dashboard: admin signed out from {peer}",
        actor=peer,
    )


# -- the spool ----------------------------------------------------------------------------


def spool_retried(message_id: str, *, actor: str) -> AuditEntry:
    return AuditEntry(
        category="System",
        level="Notice",
        message=f"spool retry {message_id}: moved from failed back to incoming, due now",
        actor=actor,
    )


def spool_made_due(message_id: str, *, actor: str) -> AuditEntry:
    """A waiting message was made due now (its attempts kept): the dashboard's Retry of one
    incoming message."""
    return AuditEntry(
        category="System",
        level="Notice",
        message=f"spool retry {message_id}: waiting message made due now (attempts kept)",
        actor=actor,
    )


def spool_flushed(made_due: int, relay: str | None, state: str | None, *, actor: str) -> AuditEntry:
    """``spool retry --all``: ``made_due`` messages made due now (waiting and failed ones)."""
    plural = "" if made_due == 1 else "s"
    scope = f"relay {relay or 'any'}, state {state or 'incoming and failed'}"
    return AuditEntry(
        category="System",
        level="Notice",
        message=f"spool retry --all ({scope}): {made_due} message{plural} made due now",
        actor=actor,
    )


def spool_deleted(message_id: str, state: str, *, actor: str) -> AuditEntry:
    return AuditEntry(
        category="System",
        level="Notice",
        message=f"spool delete {message_id}: deleted from {state}",
        actor=actor,
    )


# -- relays -------------------------------------------------------------------------------


def relay_suspended(relay: str, reason: str, seconds: float) -> AuditEntry:
    """``relay``'s deliveries fail fast for ``seconds`` (its connections timed out)."""
    return AuditEntry(
        category="Relay",
        level="Warning",
        message=(
            f"relay {relay} suspended for {_seconds(seconds)}, then tried again one "
            f"connection at a time: {_peer_text(reason)}"
        ),
        actor="dispatch",
    )


def relay_resumed(relay: str) -> AuditEntry:
    """A trial connection to a suspended ``relay`` worked: it delivers again."""
    return AuditEntry(
        category="Relay",
        level="Info",
        message=f"relay {relay} resumed: a trial connection worked",
        actor="dispatch",
    )


# -- the dashboard's operations -----------------------------------------------------------


def relay_test_sent(relay: str, recipient_domain: str, outcome: str, *, actor: str) -> AuditEntry:
    """A test message was sent through ``relay``; ``outcome`` says what the upstream did.
    Only the recipient's domain is named (the audit log is not a message log)."""
    return AuditEntry(
        category="Relay",
        level="Notice",
        message=(
            f"relay {relay}: test message to a recipient at {_peer_text(recipient_domain)}: "
            f"{_peer_text(outcome)}"
        ),
        actor=actor,
    )


def captured_released(
    message_id: str, relay: str, recipients: int, outcome: str, *, actor: str
) -> AuditEntry:
    """A Local inbox copy was sent on through ``relay`` to ``recipients`` addresses."""
    plural = "" if recipients == 1 else "es"
    return AuditEntry(
        category="System",
        level="Notice",
        message=(
            f"Local inbox: {message_id} released through relay {relay} to {recipients} "
            f"address{plural}: {_peer_text(outcome)}"
        ),
        actor=actor,
    )


def captured_deleted(removed: int, message_id: str | None, *, actor: str) -> AuditEntry:
    """Copies were deleted from the Local inbox: one (``message_id``) or every one (None)."""
    what = f"{message_id} deleted" if message_id else f"all {removed} messages deleted"
    if message_id and not removed:
        what = f"{message_id} deleted (it was gone already)"
    return AuditEntry(
        category="System", level="Notice", message=f"Local inbox: {what}", actor=actor
    )


def certificate_regenerated(path: str, fingerprint: str, *, actor: str) -> AuditEntry:
    """A new self-signed certificate was written to ``path`` (served after a restart)."""
    return AuditEntry(
        category="Config",
        level="Notice",
        message=(
            f"self-signed TLS certificate regenerated in {path} (SHA-256 {fingerprint}); "
            "listeners serve it from their next start"
        ),
        actor=actor,
    )


def retention_run_requested(removed: int, errors: int, *, actor: str) -> AuditEntry:
    """Retention ran at an operator's request ("purge now") and removed ``removed`` rows and
    files in all; ``errors`` parts could not be done (named in the daemon log)."""
    problems = f"; {errors} part(s) failed (see the daemon log)" if errors else ""
    return AuditEntry(
        category="System",
        level="Notice",
        message=f"retention run on request (purge now): {removed} rows and files removed{problems}",
        actor=actor,
    )
