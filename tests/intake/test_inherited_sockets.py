"""SMTP listeners on sockets passed by systemd (dispatch/intake/inherited.py), and reading the
socket-activation environment (dispatch/systemd/activation.py)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import trio

from dispatch.intake.inherited import inherited_smtp_listeners
from dispatch.systemd.activation import ActivationError, InheritedSocket, take_listen_fds


@pytest.fixture
def listening() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock


def port_of(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


async def test_an_inherited_socket_is_served_and_outlives_its_listener(
    listening: socket.socket,
) -> None:
    port = port_of(listening)
    inherited = InheritedSocket(listening.fileno(), "smtp")
    listeners, ports = inherited_smtp_listeners([inherited], [port], [])
    assert ports.listening == (port,)
    assert ports.tls == ()
    client = await trio.open_tcp_stream("127.0.0.1", port)
    stream = await listeners[0].accept()
    await client.send_all(b"EHLO x\r\n")
    assert await stream.receive_some(100) == b"EHLO x\r\n"
    for closing in (client, stream, listeners[0]):
        await closing.aclose()
    # The listener worked on a duplicate: the inherited socket still listens for the next start.
    assert listening.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
    listeners, _ = inherited_smtp_listeners([inherited], [port], [])
    for listener in listeners:
        await listener.aclose()


async def test_the_local_port_in_tls_ports_makes_an_implicit_tls_listener(
    listening: socket.socket,
) -> None:
    port = port_of(listening)
    listeners, ports = inherited_smtp_listeners(
        [InheritedSocket(listening.fileno(), "smtps")], [], [port]
    )
    assert ports.tls == (port,)
    assert ports.listening == (port,)
    await listeners[0].aclose()


async def test_ports_other_than_configured_are_warned_about(
    listening: socket.socket, caplog: pytest.LogCaptureFixture
) -> None:
    listeners, ports = inherited_smtp_listeners(
        [InheritedSocket(listening.fileno(), "smtp")], [25, 587], []
    )
    assert ports.configured == (25, 587)
    assert "/health reports degraded until they agree" in caplog.text
    await listeners[0].aclose()


def test_sockets_that_cannot_serve_smtp_are_refused_by_name() -> None:
    not_tcp = r"fd \d+ \('mail'\) is not a TCP socket"
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
        pytest.raises(ActivationError, match=not_tcp),
    ):
        inherited_smtp_listeners([InheritedSocket(udp.fileno(), "mail")], [], [])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as idle:
        idle.bind(("127.0.0.1", 0))
        with pytest.raises(ActivationError, match="is not listening"):
            inherited_smtp_listeners([InheritedSocket(idle.fileno(), "smtp")], [], [])
    # Unbound, so it reports [::]:0: a dual-stack wildcard would give IPv4 peers as
    # ::ffff:a.b.c.d, which no IPv4 entry of listener.allowed_cidrs matches.
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as dual:
        dual.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        with pytest.raises(ActivationError, match="BindIPv6Only=ipv6-only"):
            inherited_smtp_listeners([InheritedSocket(dual.fileno(), "smtp")], [], [])
    reader, writer = socket.socketpair()
    with reader, writer, pytest.raises(ActivationError, match="is not a TCP socket"):
        inherited_smtp_listeners([InheritedSocket(reader.fileno(), "smtp")], [], [])


def test_a_descriptor_that_is_no_socket_is_named() -> None:
    with (
        open(__file__, "rb") as file,
        pytest.raises(ActivationError, match=r"\('smtp'\): not a socket"),
    ):
        inherited_smtp_listeners([InheritedSocket(file.fileno(), "smtp")], [], [])


def test_listen_variables_for_another_process_are_dropped_and_ignored() -> None:
    env = {"LISTEN_PID": "1", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b", "HOME": "/root"}
    assert take_listen_fds(env, pid=4242) == ()
    assert env == {"HOME": "/root"}
    assert take_listen_fds({}, pid=4242) == ()
    assert take_listen_fds({"LISTEN_PID": "4242", "LISTEN_FDS": "0"}, pid=4242) == ()


def test_listen_variables_that_make_no_sense_are_errors() -> None:
    with pytest.raises(ActivationError, match="LISTEN_FDS=two is not a number"):
        take_listen_fds({"LISTEN_PID": "9", "LISTEN_FDS": "two"}, pid=9)
    with pytest.raises(ActivationError, match="names 1 descriptors but LISTEN_FDS=2"):
        take_listen_fds({"LISTEN_PID": "9", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "smtp"}, pid=9)
