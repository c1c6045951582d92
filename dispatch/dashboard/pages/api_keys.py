"""The API keys page: list, create (the key shown once), revoke.

- ``GET /api-keys``: every key, revoked ones included, with its public prefix, name, when it
  was created, last used (written at most once a minute, so "last used" is to the minute) and
  revoked. Never a hash: listings carry none (``ApiKeyRecord``).
- ``POST /api-keys`` (``name``): a new key through the API's own verifier
  (``ApiKeyVerifier.create``: audited, actor the admin). The answer is a page — not a
  redirect — that shows the full key this one time, with a copy button; it is never stored
  (only its prefix and hash are) and the answer is ``no-store`` like every dashboard page.
- ``POST /api-keys/<id>/revoke``: ``ApiKeyVerifier.revoke`` (audited; the verifier's cache of
  the key goes too, and every node sees the revocation on the key's next request).
"""

from __future__ import annotations

from quart import Blueprint, Response, request

from dispatch.dashboard import formats
from dispatch.dashboard.notices import Notice, Notices, actor
from dispatch.dashboard.render import redirect_to, render_page
from dispatch.dashboard.sources import DashboardSources
from dispatch.security.api_keys import ApiKeyVerifier
from dispatch.security.key_rows import KeyRecord
from dispatch.storage import UnknownApiKeyError
from dispatch.storage.api_keys import MAX_NAME_LENGTH, ApiKeyRecord, ApiKeyStore
from dispatch.storage.audit import ApiKeyAudit

UNAVAILABLE = ApiKeyStore.unavailable_errors


def register(bp: Blueprint, sources: DashboardSources) -> None:
    notices = Notices()
    verifier = sources.verifier or ApiKeyVerifier(
        sources.store.api_keys, ApiKeyAudit(sources.audit)
    )

    async def page(
        *,
        status: int = 200,
        error: str | None = None,
        created: tuple[KeyRecord, str] | None = None,
    ) -> Response:
        keys: list[ApiKeyRecord] = []
        unavailable = None
        try:
            keys = await sources.store.api_keys.list()
        except UNAVAILABLE as exc:
            unavailable = str(exc) or type(exc).__name__
        return await render_page(
            "dashboard/api_keys.html",
            title="API keys",
            active="api_keys",
            status=status,
            fmt=formats,
            notice=notices.take(),
            keys=keys[::-1],  # newest first
            error=error,
            created=created,
            unavailable=unavailable,
            max_name=MAX_NAME_LENGTH,
            api_port=sources.settings.current.api.port,
        )

    @bp.get("/api-keys")
    async def api_keys() -> Response:
        return await page()

    @bp.post("/api-keys")
    async def api_key_create() -> Response:
        name = (await request.form).get("name", "")
        try:
            record, key = await verifier.create(name, actor=actor())
        except ValueError as exc:
            return await page(status=400, error=str(exc))
        except UNAVAILABLE as exc:
            return await page(status=503, error=f"The key was not created: {exc}")
        return await page(status=201, created=(record, key))

    @bp.post("/api-keys/<int:key_id>/revoke")
    async def api_key_revoke(key_id: int) -> Response:
        try:
            record, first_time = await verifier.revoke(key_id, actor=actor())
        except UnknownApiKeyError as exc:
            notice = Notice(str(exc), "bad")
        except UNAVAILABLE as exc:
            notice = Notice(f"The key was not revoked: {exc}", "bad")
        else:
            what = "revoked" if first_time else "was already revoked"
            notice = Notice(f"API key {record.name!r} ({record.prefix}) {what}")
        return redirect_to(f"/api-keys?notice={notices.keep(notice)}")
