"""Binding the SMTP ports, implicit-TLS ports included (dispatch/intake/ports.py)."""

from __future__ import annotations

import logging
import socket

import pytest

from dispatch.intake.ports import ListeningPorts, NoPortBound, bind_smtp_ports
from tests.conftest import free_port


async def test_tls_ports_are_bound_beside_the_others_and_reported() -> None:
    plain, implicit = free_port(), free_port()
    listeners, ports = await bind_smtp_ports((plain,), ("127.0.0.1",), (implicit,))
    try:
        bound = sorted(listener.socket.getsockname()[1] for listener in listeners)
        assert bound == sorted((plain, implicit))
        assert ports == ListeningPorts((plain, implicit), (plain, implicit), (implicit,))
    finally:
        for listener in listeners:
            await listener.aclose()


async def test_a_tls_port_that_cannot_be_bound_is_skipped_without_fallback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    plain = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        implicit = taken.getsockname()[1]
        with caplog.at_level(logging.INFO, logger="dispatch.smtp"):
            listeners, ports = await bind_smtp_ports((plain,), ("127.0.0.1",), (implicit,))
        for listener in listeners:
            await listener.aclose()
        with pytest.raises(NoPortBound, match=str(implicit)):
            await bind_smtp_ports((), ("127.0.0.1",), (implicit,))
    # /health then shows it configured but not listening (and says "degraded").
    assert ports == ListeningPorts((plain, implicit), (plain,), ())
    assert any(
        f"implicit-TLS port {implicit} cannot be bound" in r.getMessage()
        for r in caplog.records
        if r.levelno == logging.ERROR
    )
    assert not any("falling back" in r.getMessage() for r in caplog.records)
