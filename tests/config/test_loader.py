"""Configuration loading: defaults, the example file, and every kind of broken file."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import attrs
import pytest

from dispatch.config import (
    ConfigError,
    Secret,
    Settings,
    find_config_file,
    load_settings,
    parse_settings,
    redacted,
    redacted_toml,
)
from dispatch.config.settings import SECRET, MxRelay, SmtpRelay

REPO = Path(__file__).resolve().parents[2]


def problems_of(toml: str, tmp_path: Path) -> list[str]:
    path = tmp_path / "dispatch.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    return [str(p) for p in caught.value.problems]


def test_defaults_match_spec() -> None:
    settings = load_settings(None)
    assert settings.listener.ports == (25, 587)
    assert settings.listener.bind_address == ("0.0.0.0",)
    assert settings.listener.allowed_cidrs == (
        "127.0.0.0/8",
        "::1/128",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
    )
    assert settings.listener.max_message_bytes == 26_214_400
    assert settings.listener.max_connections == 100
    assert settings.spool.retry_delays_seconds == (30.0, 300.0, 1800.0)
    assert settings.api.rate_limit_per_key == 100
    assert settings.webui.port == 8420
    assert settings.webui.allowed_cidrs == ()
    assert settings.database.url == "sqlite:///./.dispatch/dispatch.db"
    assert settings.health.timeout_seconds == 2.0
    assert settings.health.disk_warning_bytes == 1024**3
    assert settings.health.disk_critical_bytes == 100 * 1024**2
    assert settings.monitoring.address == ""
    assert [(r.name, r.kind) for r in settings.relays] == [("local", "local")]
    assert settings.default_relay == "local"


def test_example_file_loads_and_states_the_defaults() -> None:
    example = load_settings(REPO / "config.toml.example")
    assert example == load_settings(None)


def test_every_key_is_documented_in_the_example_and_the_docs() -> None:
    example = (REPO / "config.toml.example").read_text()
    docs = (REPO / "docs" / "configuration.md").read_text()
    settings = load_settings(None)
    tables = {f.name for f in attrs.fields(Settings) if attrs.has(type(getattr(settings, f.name)))}
    keys = []
    for field in attrs.fields(Settings):
        value = getattr(settings, field.name)
        if field.name in tables:
            keys += [f"{field.name}.{f.name}" for f in attrs.fields(type(value))]
        else:
            keys.append(field.name)
    for relay_cls in (SmtpRelay, MxRelay):
        keys += [f"relays.{f.name}" for f in attrs.fields(relay_cls)]
    for key in keys:
        name = key.rpartition(".")[2]
        in_example = (f"{name} =", f"{name}_env =", f"[[{name}]]")
        assert any(form in example for form in in_example), f"{key} not in the example"
        assert f"`{key}`" in docs or f"`{name}`" in docs, f"{key} not in docs/configuration.md"


def test_effective_config_round_trips_and_hides_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RELAY_PW", "hunter2-very-secret")
    (tmp_path / "key").write_text("pm-token-secret\n")
    settings = parse_settings(
        tomllib.loads(f"""
        default_relay = "primary"
        [[relays]]
        name = "primary"
        kind = "smtp"
        host = "smtp.example.net"
        password_env = "RELAY_PW"
        [[relays]]
        name = "pm"
        kind = "postmark"
        api_key_file = "{tmp_path / "key"}"
    """)
    )
    primary = settings.relay("primary")
    assert isinstance(primary, SmtpRelay)
    assert primary.password.reveal() == "hunter2-very-secret"
    assert "hunter2" not in repr(settings)
    shown = redacted_toml(settings)
    assert "hunter2" not in shown
    assert "pm-token-secret" not in shown
    assert shown.count("<redacted>") == 2
    again = parse_settings(tomllib.loads(shown))
    assert redacted(again) == redacted(settings)


def test_secret_fields_are_all_secret_typed() -> None:
    for cls in (SmtpRelay,):
        for field in attrs.fields(cls):
            if field.metadata.get(SECRET):
                assert field.default == Secret("")


BROKEN = [
    pytest.param("bogus = 1", "bogus: unknown key", id="unknown-top-level-key"),
    pytest.param(
        "[listener]\nprots = [25]",
        "listener.prots: unknown key; did you mean 'ports'?",
        id="misspelt-key",
    ),
    pytest.param(
        "[listener]\nports = [25, 70000]",
        "listener.ports[1]: 70000 is not a port (1-65535)",
        id="port-out-of-range",
    ),
    pytest.param(
        '[listener]\nports = ["25"]',
        "listener.ports[0]: expected an integer, got string",
        id="port-as-string",
    ),
    pytest.param("[listener]\nports = []", "listener.ports: is empty", id="no-ports"),
    pytest.param(
        "[listener]\nrequire_auth = 1",
        "listener.require_auth: expected true or false",
        id="wrong-type-bool",
    ),
    pytest.param(
        '[listener]\nallowed_cidrs = ["10.0.0.0/33"]',
        "listener.allowed_cidrs[0]: '10.0.0.0/33' is not a network in CIDR notation",
        id="bad-cidr",
    ),
    pytest.param(
        '[listener]\nbind_address = "localhost"',
        "listener.bind_address: 'localhost' is not an IP address",
        id="bind-hostname",
    ),
    pytest.param(
        "[listener]\nmax_connections = 0",
        "listener.max_connections: 0 is too small",
        id="zero-connections",
    ),
    pytest.param(
        "[spool]\nretry_delays_seconds = [30, -1]",
        "spool.retry_delays_seconds[1]: -1 must be greater than 0",
        id="negative-delay",
    ),
    pytest.param("listener = 5", "listener: expected a table", id="table-as-scalar"),
    pytest.param(
        '[[relays]]\nname = "x"\nkind = "smpt"',
        "relays[0].kind: 'smpt' is not a relay kind; use one of: smtp, local, mx",
        id="relay-kind-unknown",
    ),
    pytest.param('[[relays]]\nname = "x"', "relays[0].kind: required", id="relay-kind-missing"),
    pytest.param(
        '[[relays]]\nname = "x"\nkind = "smtp"',
        "relays[0].host: required key is missing",
        id="smtp-relay-without-host",
    ),
    pytest.param(
        '[[relays]]\nname = "x"\nkind = "smtp"\nhost = "h"\ntls = "ssl"',
        "relays[0].tls: 'ssl' is not one of: none, auto, starttls, implicit",
        id="relay-tls-mode",
    ),
    pytest.param(
        '[[relays]]\nname = "x"\nkind = "local"\nhost = "h"',
        "relays[0].host: unknown key",
        id="key-of-another-relay-kind",
    ),
    pytest.param(
        '[[relays]]\nname = "a"\nkind = "local"\n[[routes]]\nrelay = "b"',
        "routes[0].relay: 'b' is not a configured relay (a)",
        id="route-missing-relay",
    ),
    pytest.param(
        'default_relay = "zz"',
        "default_relay: 'zz' is not a configured relay (local)",
        id="default-relay-missing",
    ),
    pytest.param(
        '[[relays]]\nname = "a"\nkind = "local"\n[[relays]]\nname = "b"\nkind = "local"',
        "default_relay: is not set; name one of the relays (a, b)",
        id="default-relay-ambiguous",
    ),
    pytest.param(
        '[[relays]]\nname = "a"\nkind = "local"\n[[relays]]\nname = "a"\nkind = "local"',
        "relays[1].name: 'a' is used by another relay",
        id="duplicate-relay-name",
    ),
    pytest.param(
        '[[relays]]\nname = "p"\nkind = "smtp"\nhost = "h"\n'
        'password_env = "DISPATCH_TEST_SURELY_UNSET"',
        "relays[0].password_env: environment variable DISPATCH_TEST_SURELY_UNSET is not set",
        id="secret-env-unset",
    ),
    pytest.param(
        '[[relays]]\nname = "p"\nkind = "postmark"\napi_key_file = "/nonexistent/key"',
        "relays[0].api_key_file: cannot read /nonexistent/key: No such file or directory",
        id="secret-file-unreadable",
    ),
    pytest.param(
        '[[relays]]\nname = "p"\nkind = "postmark"\napi_key = "a"\napi_key_env = "B"',
        "relays[0].api_key_env: set only one of api_key, api_key_env",
        id="secret-twice",
    ),
    pytest.param(
        '[[listener.users]]\nusername = "u"\npassword_hash = "plaintext"',
        "listener.users[0].password_hash: is not an argon2 hash",
        id="user-plain-password",
    ),
    pytest.param(
        '[database]\nurl = "mysql://x"',
        "database.url: 'mysql://x' is not a database URL",
        id="database-scheme",
    ),
    pytest.param(
        '[tls]\ncert_file = "/nonexistent.pem"',
        "tls: set both cert_file and key_file",
        id="tls-half",
    ),
    pytest.param(
        '[monitoring]\naddress = "1099"',
        "monitoring.address: '1099' is not 'host:port'",
        id="monitoring-address",
    ),
    pytest.param(
        "[health]\ndisk_critical_bytes = 5000000000",
        "health.disk_critical_bytes: is above health.disk_warning_bytes",
        id="disk-order",
    ),
    pytest.param("[listener\nports = [25]", "is not valid TOML", id="toml-syntax"),
]


@pytest.mark.parametrize(("toml", "expected"), BROKEN)
def test_broken_file_names_the_key(toml: str, expected: str, tmp_path: Path) -> None:
    problems = problems_of(toml, tmp_path)
    assert any(expected in p for p in problems), problems


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    problems = problems_of(
        """
        data_dir = 5
        [listener]
        ports = [25, 70000]
        allowed_cidrs = ["nope"]
        [spool]
        worker_count = 0
        [[relays]]
        name = "x"
        kind = "smtp"
        """,
        tmp_path,
    )
    assert [p.split(":")[0] for p in problems] == [
        "listener.ports[1]",
        "listener.allowed_cidrs[0]",
        "spool.worker_count",
        "data_dir",
        "relays[0].host",
    ]


def test_check_config_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dispatch.cli import main

    bad = tmp_path / "bad.toml"
    bad.write_text("[listener]\nports = [0]\n")
    assert main(["check-config", str(bad)]) == 2
    assert "listener.ports[0]: 0 is not a port (1-65535)" in capsys.readouterr().err
    assert main(["check-config", str(REPO / "config.toml.example")]) == 0
    assert "valid" in capsys.readouterr().out
    assert main(["check-config", str(tmp_path / "missing.toml")]) == 2
    assert "cannot read the file" in capsys.readouterr().err


def test_config_file_discovery(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DISPATCH_CONFIG", raising=False)
    assert find_config_file(None) is None
    (tmp_path / "dispatch.toml").write_text("")
    assert find_config_file(None) == Path("dispatch.toml")
    monkeypatch.setenv("DISPATCH_CONFIG", "/etc/other.toml")
    assert find_config_file(None) == Path("/etc/other.toml")
    assert find_config_file("given.toml") == Path("given.toml")
    assert os.environ["DISPATCH_CONFIG"] == "/etc/other.toml"
