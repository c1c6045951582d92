"""Passwords inside URLs never show, and ``database.url`` takes ``url_env`` / ``url_file``.

Regression (issue 11, item 9): ``check-config`` printed the password of a ``database.url``
under "secrets redacted"; so did ``/debug/config`` and the error naming a bad URL.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import httpx
import pytest

from dispatch.cli import main
from dispatch.config import ConfigError, load_settings, parse_settings, redacted, redacted_toml
from dispatch.config.render import redact_url_credentials
from tests.conftest import free_port
from tests.delivery.harness import running_dispatch
from tests.support.config import base_config

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "s3cr3t-Pa55word"
URL = f"postgresql://dispatch:{PASSWORD}@db.internal:5432/mail?sslpassword=kp-{PASSWORD}"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (URL, "postgresql://dispatch:<redacted>@db.internal:5432/mail?sslpassword=<redacted>"),
        ("postgres://u:p@ss@h/d", "postgres://u:<redacted>@h/d"),  # the last @ ends it
        ("postgresql://dispatch@db/mail", "postgresql://dispatch@db/mail"),  # no password
        (
            "https://api.example.net/v1?token=abc&x=1",
            "https://api.example.net/v1?token=<redacted>&x=1",
        ),
        ("sqlite:///./.dispatch/dispatch.db", "sqlite:///./.dispatch/dispatch.db"),
        (
            "cannot open 'mysql://root:hunter2@db' nor http://a:b@c:1/?key=k#f",
            "cannot open 'mysql://root:<redacted>@db' nor http://a:<redacted>@c:1/?key=<redacted>#f",
        ),
    ],
)
def test_redact_url_credentials(text: str, shown: str) -> None:
    assert redact_url_credentials(text) == shown


def test_check_config_never_prints_a_url_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "dispatch.toml"
    path.write_text(f'[database]\nurl = "{URL}"\n')
    assert main(["check-config", str(path)]) == 0
    toml_out = capsys.readouterr().out
    assert main(["check-config", "--json", str(path)]) == 0
    json_out = capsys.readouterr().out
    for shown in (toml_out, json_out):
        assert PASSWORD not in shown
        assert "postgresql://dispatch:<redacted>@db.internal:5432/mail" in shown
    assert json.loads(json_out)["database"]["url"].startswith("postgresql://dispatch:<redacted>@")
    # What check-config prints still loads back.
    assert load_settings(path).database.url == URL
    again = parse_settings(tomllib.loads(toml_out.split("\n", 1)[1]))
    assert redacted(again) == redacted(load_settings(path))


def test_a_bad_database_url_is_named_without_its_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "dispatch.toml"
    path.write_text(f'[database]\nurl = "mysql://root:{PASSWORD}@db/mail"\n')
    assert main(["check-config", str(path)]) == 2
    error = capsys.readouterr().err
    assert "database.url: 'mysql://root:<redacted>@db/mail' is not a database URL" in error
    assert PASSWORD not in error


def test_database_url_from_the_environment_or_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISPATCH_TEST_DB_URL", URL)
    from_env = parse_settings({"database": {"url_env": "DISPATCH_TEST_DB_URL"}})
    (tmp_path / "db-url").write_text(URL + "\n")
    from_file = parse_settings({"database": {"url_file": str(tmp_path / "db-url")}})
    assert from_env.database.url == URL
    assert from_file.database.url == URL
    assert PASSWORD not in redacted_toml(from_env)
    assert PASSWORD not in redacted_toml(from_file)


@pytest.mark.parametrize(
    ("database", "message"),
    [
        ({"url": URL, "url_env": "X"}, "database.url_env: set only one of url, url_env"),
        ({"url_env": "DISPATCH_TEST_UNSET"}, "database.url_env: environment variable"),
        ({"url_file": "/nonexistent/db-url"}, "database.url_file: cannot read /nonexistent"),
    ],
)
def test_database_url_forms_are_checked(database: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings({"database": database})
    assert any(str(p).startswith(message) for p in caught.value.problems), caught.value.problems


def test_the_url_forms_are_documented() -> None:
    example = (REPO / "config.toml.example").read_text()
    docs = (REPO / "docs" / "configuration.md").read_text()
    for form in ("url_env", "url_file"):
        assert form in example
        assert f"database.{form}" in docs


async def test_debug_config_hides_passwords_in_urls(tmp_path: Path) -> None:
    port = free_port()
    relays = [
        {"name": "local", "kind": "local"},
        {
            "name": "pm",
            "kind": "postmark",
            "api_key": "pm-api-key-secret",
            "base_url": f"https://acct:{PASSWORD}@127.0.0.1:{free_port()}/",
        },
    ]
    config = base_config(
        tmp_path,
        monitoring={"address": f"127.0.0.1:{port}"},
        relays=relays,
        default_relay="local",
    )
    async with (
        running_dispatch(tmp_path, config),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client,
    ):
        page = (await client.get("/debug/config")).text
    assert PASSWORD not in page
    assert "pm-api-key-secret" not in page
    assert "https://acct:&lt;redacted&gt;@127.0.0.1" in page
