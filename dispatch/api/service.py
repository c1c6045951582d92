"""The HTTP ingestion API component on ``api.port`` (HTTP) and ``api.tls_port`` (HTTPS).

Built once by the composition root (:mod:`dispatch.daemon`) with the API's sources. Ready once
bound. ``api.enabled`` is read per request (``503`` when off), so the ports stay bound and
turning the API back on needs no restart. The key verifier's ``last_used_at`` writer runs beside
the server. Stopping: the server closes its connections (see
:func:`dispatch.web.server.serve_app`), then the verifier flushes what it holds.
"""

from __future__ import annotations

import logging
from functools import partial

import trio

from dispatch.api.app import ApiSources, build_api
from dispatch.config.live import LiveSettings
from dispatch.lifecycle import Shutdown
from dispatch.security.certs import ensure_certificate
from dispatch.web.server import bind_spec, hypercorn_config, serve_app

log = logging.getLogger("dispatch")


class HttpApi:
    """See the module docstring."""

    def __init__(self, settings: LiveSettings, sources: ApiSources) -> None:
        self._settings = settings
        self._sources = sources

    async def run(self, shutdown: Shutdown, *, task_status: trio.TaskStatus[None]) -> None:
        current = self._settings.current.api
        if not (current.http_enabled or current.tls_enabled):
            log.info("HTTP API: neither api.http_enabled nor api.tls_enabled; not listening")
            task_status.started()
            await shutdown.requested.wait()
            return
        plain = [bind_spec(a, current.port) for a in current.bind_address]
        secure = [bind_spec(a, current.tls_port) for a in current.bind_address]
        if current.tls_enabled:
            files = await trio.to_thread.run_sync(ensure_certificate, self._settings.current)
            config = hypercorn_config(secure, certfile=files.cert_file, keyfile=files.key_file)
            config.insecure_bind = plain if current.http_enabled else []
        else:
            config = hypercorn_config(plain)
        serve = partial(
            serve_app,
            request_timeout=lambda: self._settings.current.api.request_timeout_seconds,
            request_timeout_setting="api.request_timeout_seconds",
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(self._sources.verifier.run, shutdown)
            bound = await nursery.start(serve, build_api(self._sources), config, shutdown)
            log.info("HTTP API on %s", ", ".join(bound))
            task_status.started()
