"""The typed, frozen settings of Dispatch: every key of SPEC §2 and the relay/route shape of §6.

Each table of the TOML file is one frozen attrs class; field defaults are the documented
defaults (``config.toml.example`` and ``docs/configuration.md`` list them too, and a test keeps
the three in agreement). A field marked :func:`live` is applied by a SIGHUP reload without a
restart; every other changed key is logged as needing one. Fields marked :func:`secret` also
accept ``<key>_env`` (an environment variable's name) and ``<key>_file`` (a file's path).
"""

from __future__ import annotations

from typing import Any, Final, Literal

import attrs

from dispatch.config.types import (
    LOOPBACK,
    PRIVATE_AND_LOOPBACK,
    BindAddresses,
    Cidr,
    HostPort,
    NonNegativeInt,
    Port,
    PositiveFloat,
    PositiveInt,
    ProcessCount,
    RelayChoice,
    Secret,
    auto_processes,
)

LIVE: Final = "dispatch_live"
SECRET: Final = "dispatch_secret"  # noqa: S105 - a metadata key, not a password


def live(default: Any = attrs.NOTHING, *, factory: Any = None) -> Any:
    """An attrs field that a SIGHUP reload applies without a restart."""
    if factory is not None:
        return attrs.field(factory=factory, metadata={LIVE: True})
    return attrs.field(default=default, metadata={LIVE: True})


def secret() -> Any:
    """An attrs field holding a :class:`Secret` (accepts ``*_env`` and ``*_file`` too)."""
    return attrs.field(default=Secret(""), metadata={SECRET: True})


def _private_and_loopback() -> tuple[Cidr, ...]:
    return PRIVATE_AND_LOOPBACK


def _loopback() -> tuple[Cidr, ...]:
    return LOOPBACK


@attrs.frozen
class SmtpUser:
    """One SMTP AUTH account; the hash comes from ``python -m dispatch hash-password``."""

    username: str
    password_hash: Secret = secret()


@attrs.frozen
class ListenerSettings:
    ports: tuple[Port, ...] = (Port(25), Port(587))
    bind_address: BindAddresses = BindAddresses(("0.0.0.0",))  # noqa: S104 - SPEC §2 default
    server_name: str = "Dispatch"
    allowed_cidrs: tuple[Cidr, ...] = live(factory=_private_and_loopback)
    max_message_bytes: PositiveInt = live(PositiveInt(26_214_400))
    require_auth: bool = live(False)
    allow_unsecure_auth: bool = live(False)
    connection_timeout_seconds: PositiveFloat = live(PositiveFloat(60.0))
    session_timeout_seconds: PositiveFloat = live(PositiveFloat(1800.0))
    max_connections: PositiveInt = live(PositiveInt(100))
    max_connections_per_ip: PositiveInt = live(PositiveInt(50))
    users: tuple[SmtpUser, ...] = live(())
    processes: ProcessCount = attrs.field(factory=auto_processes)  # the file may say "auto"
    pin_processes: bool = True  # each intake worker on a core of its own (intake/processes.py)
    submission_ports: tuple[Port, ...] = live(())
    tls_ports: tuple[Port, ...] = ()
    # Inbound DKIM verification (RFC 6376 §6), counted only: docs/deliverability.md.
    dkim_verify: bool = live(False)
    dkim_verify_nameservers: tuple[str, ...] = live(())  # empty: the system resolver
    dkim_verify_nameserver_port: Port = live(Port(53))
    dkim_verify_timeout_seconds: PositiveFloat = live(PositiveFloat(5.0))


@attrs.frozen
class TlsSettings:
    cert_file: str = ""
    key_file: str = ""


@attrs.frozen
class SpoolSettings:
    directory: str = "./.dispatch-spool"
    worker_count: PositiveInt = PositiveInt(16)
    max_retries: NonNegativeInt = live(NonNegativeInt(3))
    retry_delays_seconds: tuple[PositiveFloat, ...] = live(
        (PositiveFloat(30.0), PositiveFloat(300.0), PositiveFloat(1800.0))
    )


@attrs.frozen
class ApiSettings:
    enabled: bool = live(True)
    bind_address: BindAddresses = BindAddresses(("0.0.0.0",))  # noqa: S104 - as the listener
    port: Port = Port(8025)
    http_enabled: bool = True
    tls_port: Port = Port(8026)
    tls_enabled: bool = False
    allowed_cidrs: tuple[Cidr, ...] = live(factory=_private_and_loopback)
    max_message_bytes: PositiveInt = live(PositiveInt(26_214_400))
    rate_limit_per_key: PositiveInt = live(PositiveInt(100))
    max_concurrent_requests: PositiveInt = live(PositiveInt(16))
    max_concurrent_requests_per_ip: PositiveInt = live(PositiveInt(8))
    request_timeout_seconds: PositiveFloat = live(PositiveFloat(120.0))


@attrs.frozen
class WebUiSettings:
    port: Port = Port(8420)
    bind_address: BindAddresses = BindAddresses(("0.0.0.0",))  # noqa: S104 - as the listener
    allowed_cidrs: tuple[Cidr, ...] = live(())


@attrs.frozen
class DatabaseSettings:
    # A plain string (it names the database and is shown, its password redacted), but it may
    # carry a password (postgresql://user:pw@host/db), so it accepts url_env / url_file too.
    url: str = attrs.field(default="sqlite:///./.dispatch/dispatch.db", metadata={SECRET: True})
    # This node's id on every log row and in the dashboard's node list; "" = generated once
    # and kept in data_dir/node-id (docs/scaling.md).
    node_id: str = ""
    # PostgreSQL only: connections per node, and the server-side statement and lock timeout.
    pool_size: PositiveInt = PositiveInt(4)
    statement_timeout_seconds: PositiveFloat = PositiveFloat(5.0)


@attrs.frozen
class RetentionSettings:
    """Days to keep each kind of record; ``0`` keeps it forever. ``dispatch/retention.py``
    removes what is older at start and every 6 hours, reading these at each run."""

    delivered_log_days: NonNegativeInt = live(NonNegativeInt(7))
    failed_log_days: NonNegativeInt = live(NonNegativeInt(7))
    failed_spool_days: NonNegativeInt = live(NonNegativeInt(7))
    captured_days: NonNegativeInt = live(NonNegativeInt(7))
    audit_log_days: NonNegativeInt = live(NonNegativeInt(7))


@attrs.frozen
class HealthSettings:
    timeout_seconds: PositiveFloat = live(PositiveFloat(2.0))
    disk_warning_bytes: NonNegativeInt = live(NonNegativeInt(1024**3))
    disk_critical_bytes: NonNegativeInt = live(NonNegativeInt(100 * 1024**2))
    # A due message waiting longer than this for a delivery worker: /health degraded.
    queue_age_warning_seconds: PositiveFloat = live(PositiveFloat(900.0))


@attrs.frozen
class MonitoringSettings:
    address: HostPort = HostPort("")
    allowed_cidrs: tuple[Cidr, ...] = live(factory=_loopback)


@attrs.frozen
class BouncesSettings:
    """Delivery status notifications (RFC 3464) to the envelope sender: docs/deliverability.md."""

    enabled: bool = live(True)
    reporting_mta: str = live("")  # empty: listener.server_name
    # A "delayed" notice once a message has waited this long; 0: never.
    delay_warning_after_seconds: NonNegativeInt = live(NonNegativeInt(0))


@attrs.frozen
class SuppressionSettings:
    """Addresses that bounced hard are not mailed again for ``days``: docs/deliverability.md."""

    enabled: bool = live(True)
    mode: Literal["intake", "delivery"] = live("intake")
    days: PositiveInt = live(PositiveInt(30))


# --- relays (SPEC §6): one class per kind, chosen by the `kind` key -----------------------


@attrs.frozen(kw_only=True)
class RelayCommon:
    name: str
    max_inflight: PositiveInt = PositiveInt(8)
    rate_limit_per_minute: NonNegativeInt = NonNegativeInt(0)  # 0 = unlimited
    timeout_seconds: PositiveFloat = PositiveFloat(60.0)


@attrs.frozen(kw_only=True)
class SmtpRelay(RelayCommon):
    kind: Literal["smtp"] = "smtp"
    host: str
    port: Port = Port(587)
    tls: Literal["none", "auto", "starttls", "implicit"] = "starttls"
    username: str = ""
    password: Secret = secret()
    verify_certificates: bool = True
    ca_file: str = ""
    helo_name: str = ""  # empty: listener.server_name
    dkim_sign: bool = True  # with the [[dkim]] key of the sender's domain, if there is one


@attrs.frozen(kw_only=True)
class LocalRelay(RelayCommon):
    kind: Literal["local"] = "local"


@attrs.frozen(kw_only=True)
class MxRelay(RelayCommon):
    kind: Literal["mx"] = "mx"
    port: Port = Port(25)
    nameservers: tuple[str, ...] = ()  # empty: the system resolver
    nameserver_port: Port = Port(53)
    require_tls: bool = False
    helo_name: str = ""
    # Outbound security (docs/deliverability.md#mta-sts, docs/delivery.md): MTA-STS policies
    # (RFC 8461) and the per-domain record that refuses a downgrade.
    mta_sts: bool = True
    mta_sts_port: Port = Port(443)  # HTTPS port of mta-sts.<domain> (tests use another)
    security_levels: bool = True
    ca_file: str = ""  # PEM bundle trusted instead of the system store (MX and policy hosts)
    dkim_sign: bool = True  # with the [[dkim]] key of the sender's domain, if there is one


@attrs.frozen(kw_only=True)
class PostmarkRelay(RelayCommon):
    kind: Literal["postmark"] = "postmark"
    api_key: Secret = secret()
    base_url: str = "https://api.postmarkapp.com"
    message_stream: str = "outbound"


@attrs.frozen(kw_only=True)
class MailgunRelay(RelayCommon):
    kind: Literal["mailgun"] = "mailgun"
    api_key: Secret = secret()
    domain: str
    base_url: str = "https://api.mailgun.net"


@attrs.frozen(kw_only=True)
class SesRelay(RelayCommon):
    kind: Literal["ses"] = "ses"
    region: str
    # Both empty: the standard AWS environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    # AWS_SESSION_TOKEN). Secrets, so each also takes *_env and *_file.
    access_key_id: Secret = secret()
    secret_access_key: Secret = secret()
    session_token: Secret = secret()  # temporary credentials (STS) only
    configuration_set: str = ""  # SES's ConfigurationSetName; empty: none
    base_url: str = ""  # empty: https://email.<region>.amazonaws.com


RelaySettings = SmtpRelay | LocalRelay | MxRelay | PostmarkRelay | MailgunRelay | SesRelay

RELAY_KINDS: Final[dict[str, type[RelaySettings]]] = {
    "smtp": SmtpRelay,
    "local": LocalRelay,
    "mx": MxRelay,
    "postmark": PostmarkRelay,
    "mailgun": MailgunRelay,
    "ses": SesRelay,
}


@attrs.frozen(kw_only=True)
class RouteSettings:
    """A routing rule (SPEC §6): glob patterns on the sender and recipient domains."""

    priority: int = 100
    sender_domain: str = "*"
    recipient_domain: str = "*"
    relay: RelayChoice
    enabled: bool = True


@attrs.frozen(kw_only=True)
class DkimKey:
    """A DKIM signing key (RFC 6376; Ed25519 per RFC 8463) for one sender domain and its
    subdomains; made by ``dispatch dkim generate``. Loaded at start-up."""

    domain: str
    selector: str
    private_key_file: str


WebhookEvent = Literal["delivered", "deferred", "failed", "bounced"]


def _all_webhook_events() -> tuple[WebhookEvent, ...]:
    return ("delivered", "deferred", "failed", "bounced")


@attrs.frozen(kw_only=True)
class WebhookSettings:
    """One receiver of delivery events (``[[webhooks]]``, docs/webhooks.md): a signed JSON
    POST per event, retried from the outbox until answered 2xx or given up."""

    url: str
    events: tuple[WebhookEvent, ...] = attrs.field(factory=_all_webhook_events)
    secret: Secret = secret()  # HMAC-SHA256 key; required (secret_env or secret_file too)
    timeout_seconds: PositiveFloat = PositiveFloat(10.0)
    max_concurrency: PositiveInt = PositiveInt(4)
    retry_first_seconds: PositiveFloat = PositiveFloat(5.0)
    retry_max_seconds: PositiveFloat = PositiveFloat(600.0)
    give_up_after_seconds: PositiveFloat = PositiveFloat(86400.0)
    ca_file: str = ""  # PEM bundle trusted for an https url; empty: httpx's (certifi)


def _default_relays() -> tuple[RelaySettings, ...]:
    return (LocalRelay(name="local"),)


@attrs.frozen
class Settings:
    """The whole effective configuration. Build it with :func:`dispatch.config.load_settings`."""

    listener: ListenerSettings = attrs.Factory(ListenerSettings)
    tls: TlsSettings = attrs.Factory(TlsSettings)
    spool: SpoolSettings = attrs.Factory(SpoolSettings)
    api: ApiSettings = attrs.Factory(ApiSettings)
    webui: WebUiSettings = attrs.Factory(WebUiSettings)
    database: DatabaseSettings = attrs.Factory(DatabaseSettings)
    data_dir: str = "./.dispatch"
    retention: RetentionSettings = attrs.Factory(RetentionSettings)
    health: HealthSettings = attrs.Factory(HealthSettings)
    monitoring: MonitoringSettings = attrs.Factory(MonitoringSettings)
    bounces: BouncesSettings = attrs.Factory(BouncesSettings)
    suppression: SuppressionSettings = attrs.Factory(SuppressionSettings)
    relays: tuple[RelaySettings, ...] = live(factory=_default_relays)
    routes: tuple[RouteSettings, ...] = live(())
    default_relay: str = live("")  # empty: the only relay, if there is exactly one
    webhooks: tuple[WebhookSettings, ...] = live(())
    dkim: tuple[DkimKey, ...] = ()

    def relay(self, name: str) -> RelaySettings:
        for relay in self.relays:
            if relay.name == name:
                return relay
        raise KeyError(name)
