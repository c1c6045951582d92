"""The Settings page: the effective configuration, reload, the TLS certificate, storage usage.

The configuration file stays the one source of truth (operators keep it in version control):
the page edits nothing. It shows which file is in use and every key with its effective value
(secrets redacted: :func:`dispatch.config.render.redacted`), says whether a reload applies a
key or it needs a restart, and reloads the file on request.

- ``GET /settings``: all of it. Storage usage is measured on each view: the spool's folders
  (one ``scandir`` each, in a worker thread) and the database (rows per table and its size,
  ``dispatch/storage/usage.py``).
- ``POST /settings/reload``: :meth:`LiveSettings.reload`, audited like a SIGHUP but with the
  admin as actor; the page then says which keys changed, which wait for a restart, or why the
  file was refused (the running configuration is kept).
- ``POST /settings/certificate``: a new self-signed certificate, only when the one in use is
  the self-signed one Dispatch made (``tls.cert_file`` empty). Listeners load their
  certificate when they start, so it is served from the next start; audited.
- ``POST /settings/purge``: one retention run now (:meth:`Retention.run_once`, the retention
  component's own object), audited; the page says what it removed.
"""

from __future__ import annotations

import time

import attrs
import trio
from quart import Blueprint, Response

from dispatch.config.live import ReloadResult
from dispatch.config.render import redacted_toml
from dispatch.dashboard import formats
from dispatch.dashboard.notices import Notice, Notices, actor
from dispatch.dashboard.render import redirect_to, render_page
from dispatch.dashboard.settings_facts import (
    certificate_facts,
    config_rows,
    self_signed_paths,
    spool_usage,
)
from dispatch.dashboard.sources import DashboardSources
from dispatch.retention import Retention
from dispatch.security.certs import generate_self_signed
from dispatch.spool.sweep import SpoolSweeper
from dispatch.storage import DatabaseUnavailableError, audit
from dispatch.storage.nodes import NodeRow, list_nodes
from dispatch.storage.usage import DatabaseUsage, database_usage


def reload_notice(result: ReloadResult) -> Notice:
    """What a reload did, in the page's words."""
    if result.path is None:
        return Notice(
            "Nothing to reload: Dispatch runs on built-in defaults. Start it with "
            "--config FILE (or DISPATCH_CONFIG) to use a configuration file.",
            "warn",
        )
    if result.problems:
        return Notice(
            f"{result.path} was refused; the running configuration is kept", "bad", result.problems
        )
    details = [f"applied: {key}" for key in result.changed]
    details += [f"changed but needs a restart: {key}" for key in result.needs_restart]
    title = f"Reloaded {result.path}: " + (
        "live keys applied" if result.changed else "no live key changed"
    )
    return Notice(title, "warn" if result.needs_restart else "ok", tuple(details))


async def _database(sources: DashboardSources) -> tuple[DatabaseUsage | None, str | None]:
    try:
        return await database_usage(sources.store.database), None
    except DatabaseUnavailableError as exc:
        return None, str(exc) or type(exc).__name__


async def _nodes(sources: DashboardSources) -> list[NodeRow]:
    """Every node sharing the database, from their heartbeats (docs/scaling.md)."""
    try:
        return await list_nodes(sources.store.database)
    except DatabaseUnavailableError:
        return []  # the Database section already says why


def register(bp: Blueprint, sources: DashboardSources) -> None:
    notices = Notices()
    retention = sources.retention or Retention(
        lambda: sources.settings.current.retention,
        sources.store,
        SpoolSweeper(sources.spool),
        sources.stats,
    )

    @bp.get("/settings")
    async def settings() -> Response:
        current = sources.settings.current
        certificate = await trio.to_thread.run_sync(certificate_facts, current)
        folders = await trio.to_thread.run_sync(spool_usage, sources.spool.directory)
        database, database_error = await _database(sources)
        return await render_page(
            "dashboard/settings.html",
            title="Settings",
            active="settings",
            fmt=formats,
            notice=notices.take(),
            config_path=sources.settings.path,
            rows=config_rows(current),
            toml=redacted_toml(current),
            certificate=certificate,
            folders=folders,
            spool_directory=sources.spool.directory,
            database=database,
            database_error=database_error,
            nodes=await _nodes(sources),
            this_node=sources.store.log.node_id,
            now=time.time(),
            retention=attrs.asdict(current.retention),
            last_run=sources.stats.retention_last_run,
        )

    @bp.post("/settings/reload")
    async def settings_reload() -> Response:
        result = await sources.settings.reload()
        sources.audit(audit.config_reload(result, actor=actor()))
        return redirect_to(f"/settings?notice={notices.keep(reload_notice(result))}")

    @bp.post("/settings/certificate")
    async def settings_certificate() -> Response:
        current = sources.settings.current
        if current.tls.cert_file:
            notice = Notice(
                f"The certificate in use is {current.tls.cert_file} (tls.cert_file): Dispatch "
                "did not make it and does not replace it. Renew it where it comes from.",
                "bad",
            )
            return redirect_to(f"/settings?notice={notices.keep(notice)}#tls")
        cert_path, key_path = self_signed_paths(current)
        await trio.to_thread.run_sync(
            generate_self_signed, current.listener.server_name, cert_path, key_path
        )
        facts = await trio.to_thread.run_sync(certificate_facts, current)
        sources.audit(
            audit.certificate_regenerated(str(cert_path), facts.fingerprint, actor=actor())
        )
        notice = Notice(
            f"A new self-signed certificate is in {cert_path} (SHA-256 {facts.fingerprint}). "
            "The listeners load their certificate when they start: restart Dispatch to serve it.",
            "warn",
        )
        return redirect_to(f"/settings?notice={notices.keep(notice)}#tls")

    @bp.post("/settings/purge")
    async def settings_purge() -> Response:
        run = await retention.run_once()
        removed = sum(run.removed.values())
        sources.audit(audit.retention_run_requested(removed, len(run.errors), actor=actor()))
        details = [f"{kind}: {count} removed" for kind, count in run.removed.items() if count]
        details += [f"not done: {error}" for error in run.errors]
        title = f"Retention ran in {run.duration_seconds:.2f} s: {removed} rows and files removed"
        notice = Notice(title, "bad" if run.errors else "ok", tuple(details))
        return redirect_to(f"/settings?notice={notices.keep(notice)}#storage")
