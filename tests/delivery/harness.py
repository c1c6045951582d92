"""Dispatch run in-process for end-to-end tests: the real supervisor and components.

``running_dispatch(root, config)`` takes a configuration from
``tests.support.config.base_config``; tests wait on it with
``tests.support.waiting.wait_until_async``.
"""

from __future__ import annotations

import smtplib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from dispatch.config import parse_settings
from dispatch.config.live import LiveSettings
from dispatch.daemon import Parts, assemble, open_spool
from dispatch.storage import MessageEvent
from dispatch.supervisor import Supervisor


@attrs.define
class Running:
    parts: Parts
    supervisor: Supervisor
    smtp_port: int
    root: Path

    def send(self, sender: str, recipients: list[str], message: bytes) -> str:
        """Submit with smtplib (blocking: call through trio.to_thread); return the queue id."""
        with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=10) as client:
            client.ehlo()
            client.mail(sender)
            for recipient in recipients:
                client.rcpt(recipient)
            code, text = client.data(message)
            assert code == 250, (code, text)
            return text.split()[-1].decode()

    async def submit(self, sender: str, recipients: list[str], message: bytes) -> str:
        return await trio.to_thread.run_sync(self.send, sender, recipients, message)

    async def history(self, message_id: str) -> list[MessageEvent]:
        await self.parts.store.log.wait_until_written()
        return await self.parts.store.queries.message_history(message_id)


@asynccontextmanager
async def running_dispatch(root: Path, config: dict[str, Any]) -> AsyncIterator[Running]:
    settings = parse_settings(config)
    live = LiveSettings(settings, None)
    async with open_spool(Path(settings.spool.directory)) as spool, trio.open_nursery() as nursery:
        parts, components = assemble(live, spool)
        supervisor = Supervisor(components, live, grace_seconds=5, on_ready=parts.started.set)
        nursery.start_soon(supervisor.run)
        await supervisor.ready.wait()
        yield Running(parts, supervisor, settings.listener.ports[0], root)
        supervisor.request_stop()
