"""The running configuration, replaced as a whole by SIGHUP reloads.

Components keep a reference to :class:`LiveSettings` and read :attr:`LiveSettings.current`
each time they need a live key (an allow-list, a limit), so a reload takes effect on the
next connection or message without any component being told. Components that must react at
once (rebuilding a relay pool) wait on :meth:`LiveSettings.wait_changed`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import attrs
import trio

from dispatch.config.loader import ConfigError, load_settings
from dispatch.config.render import apply_reload, changed_keys
from dispatch.config.settings import Settings

log = logging.getLogger("dispatch.config")


@attrs.frozen
class ReloadResult:
    """What a reload did: ``changed`` live keys now apply (``applied``: any did),
    ``needs_restart`` keys changed in the file but wait for a restart, ``problems`` made the
    file invalid (nothing changed then). Key names only, never values. ``path``: the file
    read (None: Dispatch runs on built-in defaults and there was nothing to read)."""

    applied: bool
    needs_restart: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    path: Path | None = None


class LiveSettings:
    """Owns the current :class:`Settings` and the file they came from (``None``: defaults)."""

    def __init__(self, settings: Settings, path: Path | None) -> None:
        self.current = settings
        self.path = path
        self.generation = 0
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        """Return after the next successful reload."""
        await self._changed.wait()

    async def reload(self) -> ReloadResult:
        """Re-read the file; apply live keys, log the keys that need a restart.

        An invalid file changes nothing: its problems are logged and returned.
        """
        if self.path is None:
            log.info("reload requested, but Dispatch runs on built-in defaults: nothing to do")
            return ReloadResult(applied=False)
        try:
            fresh = await trio.to_thread.run_sync(load_settings, self.path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload rejected, keeping the running configuration: %s", problem)
            problems = tuple(map(str, exc.problems))
            return ReloadResult(applied=False, problems=problems, path=self.path)
        merged, needs_restart = apply_reload(self.current, fresh)
        for key in needs_restart:
            log.warning("reload: %s changed but needs a restart to take effect", key)
        live_keys = changed_keys(self.current, merged)
        changed = merged != self.current
        self.current = merged
        if changed:
            self.generation += 1
            self._changed.set()
            self._changed = trio.Event()
        log.info(
            "configuration reloaded from %s (%s)",
            self.path,
            "live keys applied" if changed else "no live key changed",
        )
        return ReloadResult(
            applied=changed,
            needs_restart=tuple(needs_restart),
            changed=tuple(live_keys),
            path=self.path,
        )
