"""The one builder of a daemon configuration for tests.

:func:`base_config` returns the configuration as a dict (what ``parse_settings`` takes for a
Dispatch run in-process); :func:`dump` / :func:`write_config` turn it into the TOML file a
``python -m dispatch`` subprocess reads. Everything a test environment must change is in the
base: every listener on 127.0.0.1 on a free port, the spool and the data directory under the
test's own directory. Every other key keeps its production default, so a test states, by the
keywords it passes, exactly what it changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import tomli_w

from tests.conftest import free_port


@attrs.frozen
class Ports:
    """The daemon's SMTP, API and dashboard ports."""

    smtp: int
    api: int
    webui: int

    @classmethod
    def pick(cls) -> Ports:
        return cls(free_port(), free_port(), free_port())


def base_config(root: Path, ports: Ports | None = None, **sections: Any) -> dict[str, Any]:
    """A configuration on 127.0.0.1 with its spool and data under ``root``.

    ``ports`` are free ones unless given. Each keyword is a top-level key: a dict merges into
    the table of that name (``listener={"max_connections": 7}`` keeps the ports), anything
    else replaces the key (``relays=[...]``, ``default_relay="upstream"``).
    """
    ports = ports or Ports.pick()
    config: dict[str, Any] = {
        "data_dir": str(root / "data"),
        # One SMTP process (the default is one per core): a test about several says so.
        "listener": {"ports": [ports.smtp], "bind_address": "127.0.0.1", "processes": 1},
        "spool": {"directory": str(root / "spool")},
        "database": {"url": f"sqlite:///{root / 'data' / 'dispatch.db'}"},
        "webui": {"port": ports.webui, "bind_address": "127.0.0.1"},
        "api": {"port": ports.api, "bind_address": "127.0.0.1"},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def smtp_relay(name: str, port: int, **keys: Any) -> dict[str, Any]:
    """A plain-text ``smtp`` relay to 127.0.0.1:``port`` (5 s timeout unless ``keys`` say)."""
    relay = {"name": name, "kind": "smtp", "host": "127.0.0.1", "port": port, "tls": "none"}
    relay.update({"timeout_seconds": 5, **keys})
    return relay


def dump(config: dict[str, Any]) -> str:
    """The configuration as TOML text (tomli-w writes tables after plain keys, as TOML needs)."""
    return tomli_w.dumps(config)


def write_config(path: Path, config: dict[str, Any]) -> str:
    """Write the configuration to ``path`` as TOML; return the text."""
    text = dump(config)
    path.write_text(text)
    return text
