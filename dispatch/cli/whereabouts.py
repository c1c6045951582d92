"""Which daemon state a command acts on, said plainly when no daemon runs there.

Commands that act on a daemon's state (``spool``, ``send-test``, ``api-key``, ``audit``) find
the daemon through its control socket, ``<data_dir>/control.sock``, where ``data_dir`` comes
from the configuration the command loads: ``--config``, ``$DISPATCH_CONFIG`` or
``./dispatch.toml``, else the built-in defaults (paths relative to the current directory). Run
from another directory with nothing to say which configuration, a command would otherwise work
on a fresh spool and database of its own without a word; :func:`no_daemon_notice` is that word.
"""

from __future__ import annotations

from pathlib import Path

from dispatch.config import Settings
from dispatch.config.render import redact_url_credentials
from dispatch.control.client import daemon_answers
from dispatch.storage.sqlite import URL_PREFIX, sqlite_path


def describe_database(url: str) -> str:
    """The database as an operator can find it: an absolute file path for SQLite."""
    if url.startswith(URL_PREFIX):
        return str(Path(sqlite_path(url)).absolute())
    return redact_url_credentials(url)


def no_daemon_notice(settings: Settings, config: Path | None) -> str | None:
    """None when a daemon answers on this configuration's control socket; otherwise one line
    naming the configuration, spool and database the command uses, and how to reach a daemon."""
    data_dir = Path(settings.data_dir).absolute()
    if daemon_answers(data_dir):
        return None
    source = (
        f"configuration {config.absolute()}"
        if config is not None
        else "the built-in defaults (no --config, no $DISPATCH_CONFIG, no ./dispatch.toml here)"
    )
    spool = Path(settings.spool.directory).absolute()
    database = describe_database(settings.database.url)
    return (
        f"dispatch: no daemon runs with {source} (no answer on {data_dir}/control.sock); "
        f"working on the spool {spool} and the database {database} directly. To act on a "
        "running daemon, run the command in its directory or give it the daemon's --config."
    )
