"""``[[webhooks]]``: defaults, secrets from the environment or a file, and every mistake named
by its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from dispatch.config import ConfigError, parse_settings


def problems(*webhooks: dict[str, object]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_settings({"webhooks": list(webhooks)})
    return [str(problem) for problem in caught.value.problems]


def test_defaults_and_a_secret_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_SECRET", "from-the-environment")
    (hook,) = parse_settings(
        {"webhooks": [{"url": "https://app.example/hooks", "secret_env": "HOOK_SECRET"}]}
    ).webhooks
    assert hook.secret.reveal() == "from-the-environment"
    assert "from-the-environment" not in repr(hook)
    assert hook.events == ("delivered", "deferred", "failed", "bounced")
    assert hook.timeout_seconds == 10.0
    assert hook.max_concurrency == 4
    assert (hook.retry_first_seconds, hook.retry_max_seconds) == (5.0, 600.0)
    assert hook.give_up_after_seconds == 86400.0


def test_a_secret_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("from-a-file\n")
    (hook,) = parse_settings(
        {"webhooks": [{"url": "http://10.0.0.5/h", "secret_file": str(tmp_path / "key")}]}
    ).webhooks
    assert hook.secret.reveal() == "from-a-file"


def test_each_mistake_names_its_key() -> None:
    # Each value's type and range first (every problem at once), then the checks across keys.
    found = problems(
        {"url": "https://app.example/1", "secret": "k"},
        {"url": "https://app.example/2", "secret": "k"},
        {"url": "https://app.example/hooks", "secret": "k", "events": ["sent"]},
        {"url": "https://app.example/hooks", "secret": "k", "timeout_seconds": 0},
        {"url": "https://", "secret_env": "NOT_SET_ANYWHERE_42"},
        {"secret": "k", "retries": 3},
    )
    assert found == [
        "webhooks[2].events[0]: 'sent' is not one of: delivered, deferred, failed, bounced",
        "webhooks[3].timeout_seconds: 0 must be greater than 0",
        "webhooks[4].secret_env: environment variable NOT_SET_ANYWHERE_42 is not set; export "
        "it, or use secret / secret_file instead",
        "webhooks[5].url: required key is missing",
        "webhooks[5].retries: unknown key; known keys: url, events, secret, timeout_seconds, "
        "max_concurrency, retry_first_seconds, retry_max_seconds, give_up_after_seconds, ca_file",
    ]
    found = problems(
        {"url": "ftp://app.example/hooks", "secret": "k"},
        {"url": "https://app.example/hooks", "events": []},
        {"url": "https://app.example/hooks", "secret": "k", "retry_max_seconds": 1},
        {"url": "https://", "secret": "k"},
        {"url": "https://app.example/tls", "secret": "k", "ca_file": "/nonexistent/ca.pem"},
    )
    assert found == [
        "webhooks[0].url: 'ftp://app.example/hooks' is not an http(s) URL, e.g. "
        "'https://app/hooks'",
        "webhooks[1].secret: is empty; set secret_env (an environment variable's name) or "
        "secret_file to the key the receiver checks the signature with",
        "webhooks[1].events: is empty; list at least one of delivered, deferred, failed, "
        "bounced (or remove the webhook)",
        "webhooks[2].url: 'https://app.example/hooks' is used by another webhook",
        "webhooks[2].retry_max_seconds: is below retry_first_seconds; raise it",
        "webhooks[3].url: 'https://' is not an http(s) URL, e.g. 'https://app/hooks'",
        "webhooks[4].ca_file: cannot read /nonexistent/ca.pem; check the path and permissions",
    ]
