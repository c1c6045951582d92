"""listener.max_connections_per_ip (issue 11, item 14): one address cannot take every slot."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from dispatch.intake.listener import SmtpListener
from tests.intake.conftest import Smtpd, in_thread
from tests.support.waiting import wait_until_async


@contextmanager
def held(port: int, source: str, count: int) -> Iterator[list[bytes]]:
    """``count`` connections from ``source``, each past its first reply; yields those replies."""
    with ExitStack() as stack:
        banners = []
        for _ in range(count):
            sock = stack.enter_context(
                socket.create_connection(("127.0.0.1", port), 10, (source, 0))
            )
            banners.append(sock.recv(1024))
        yield banners


def banner(port: int, source: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), 10, (source, 0)) as sock:
        data = b""
        while chunk := sock.recv(1024):  # the refusal is followed by a close
            data += chunk
            if data.startswith(b"220"):
                break
        return data


async def wait_open(listener: SmtpListener, count: int) -> None:
    await wait_until_async(lambda: listener.open_sessions == count, within=5)


async def test_one_address_gets_at_most_its_share_and_others_still_get_in(smtpd: Smtpd) -> None:
    smtpd.configure(max_connections=10, max_connections_per_ip=3)

    def flood_then_others() -> tuple[list[bytes], bytes, bytes]:
        with held(smtpd.port, "127.0.0.2", 5) as banners:
            other = banner(smtpd.port, "127.0.0.3")
            again = banner(smtpd.port, "127.0.0.2")
        return banners, other, again

    banners, other, again = await in_thread(flood_then_others)
    assert [b[:3] for b in banners] == [b"220"] * 3 + [b"421"] * 2
    assert banners[3].startswith(b"421 4.7.0 Too many connections from your address")
    assert other.startswith(b"220")  # another address is let in meanwhile
    assert again.startswith(b"421 4.7.0")
    assert smtpd.stats.smtp_denied["max_connections_per_ip"] == 3
    assert smtpd.stats.smtp_denied["max_connections"] == 0

    # Closed sessions give their slots back; no address is remembered once it has none.
    await wait_open(smtpd.listener, 0)
    assert not smtpd.listener.sessions_by_ip
    assert (await in_thread(lambda: banner(smtpd.port, "127.0.0.2"))).startswith(b"220")


async def test_the_limit_is_live_and_never_above_max_connections(smtpd: Smtpd) -> None:
    smtpd.configure(max_connections=2, max_connections_per_ip=50)

    def two_and_one() -> list[bytes]:
        with held(smtpd.port, "127.0.0.2", 3) as banners:
            return banners

    # max_connections is the smaller limit, and it answers first (reason max_connections).
    assert [b[:3] for b in await in_thread(two_and_one)] == [b"220", b"220", b"421"]
    assert smtpd.stats.smtp_denied["max_connections"] == 1
    await wait_open(smtpd.listener, 0)

    smtpd.configure(max_connections=100, max_connections_per_ip=1)  # a reload, no restart
    assert [b[:3] for b in await in_thread(two_and_one)] == [b"220", b"421", b"421"]
    assert smtpd.stats.smtp_denied["max_connections_per_ip"] == 2


async def test_each_process_takes_its_share_of_the_per_ip_limit(smtpd: Smtpd) -> None:
    smtpd.configure(max_connections=100, max_connections_per_ip=5)
    smtpd.listener.processes = 2  # as in an intake worker of listener.processes = 2

    def four() -> list[bytes]:
        with held(smtpd.port, "127.0.0.2", 4) as banners:
            return banners

    assert [b[:3] for b in await in_thread(four)] == [b"220"] * 3 + [b"421"]  # ceil(5 / 2)
