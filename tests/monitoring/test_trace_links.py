"""Trace links, histograms, followed messages and dialogue lines: the pieces, without I/O.

The same pieces seen through real traffic and HTTP are in test_trace_flow.py.
"""

from __future__ import annotations

import pytest

from dispatch.monitoring import trace_pages, traces
from dispatch.monitoring.dialogue import TlsFacts, command_line, reply_lines
from dispatch.monitoring.traces import BUCKETS, MAX_MESSAGE_CHARS, Tracer
from dispatch.smtp import Reply
from dispatch.smtp.events import Auth, AuthResponse, CommandError, Ehlo, Mail, Rcpt

HOSTILE = "<script>x</script>\r\nS: 250 forged\x1b[31m\u202e"


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def _queue(tracer: Tracer, message_id: str, parent: traces.Trace | None = None) -> traces.Trace:
    return tracer.message_queued(
        message_id,
        mail_from="a@example.test",
        recipients=["b@example.test"],
        size=10,
        parent=parent,
    )


def test_a_child_names_its_parent_and_the_parent_links_to_it() -> None:
    tracer = Tracer()
    session = tracer.start("smtp.session", "127.0.0.1 → port 25")
    message = _queue(tracer, "spl_1", parent=session)
    attempt = message.child("delivery.attempt", "spl_1 attempt 1")
    assert message.parent == session.link
    assert attempt.parent == message.link
    assert session.children == [message.link]
    assert message.children == [attempt.link]
    [queued] = [e for e in session.events() if e.link is not None]
    assert queued.link == message.link
    assert queued.message == "queued spl_1 (10 bytes)"
    assert message.title == "spl_1 <a@example.test> → b@example.test"


def test_children_listed_are_capped_and_the_rest_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(traces, "MAX_CHILDREN", 3)
    tracer = Tracer()
    session = tracer.start("smtp.session", "busy")
    children = [session.child("message", f"m{n}") for n in range(5)]
    assert session.children == [c.link for c in children[:3]]
    assert session.children_dropped == 2
    assert [e.link for e in session.events()] == [c.link for c in children]  # all in the timeline
    session.linked(children[0].link, "again")  # a listed child: neither listed again nor dropped
    session.linked(children[4].link, "again")  # one not listed: counted again
    assert session.children == [c.link for c in children[:3]]
    assert session.children_dropped == 3


def test_the_histogram_counts_each_finished_trace_in_one_bucket() -> None:
    clock = FakeClock()
    tracer = Tracer(clock=clock)
    for seconds in (0.0, 0.07, 0.3, 2.0, 150.0, 0.01):
        trace = tracer.start("relay.dialogue", f"took {seconds}")
        clock.now += seconds
        trace.finish()
    family = tracer.families["relay.dialogue"]
    assert family.histogram == [2, 1, 0, 1, 0, 1, 0, 1]
    assert len(family.histogram) == len(BUCKETS)
    assert family.seconds_total == pytest.approx(152.38)
    assert sum(family.histogram) == family.finished_total == 6


def test_a_message_is_followed_across_attempts_until_it_is_done() -> None:
    tracer = Tracer()
    queued = _queue(tracer, "spl_2")
    assert tracer.message_trace("spl_2") is queued  # the next attempt finds it
    queued.finish()  # delivered: no longer followed
    again = tracer.message_trace("spl_2", "spl_2 title")
    assert again is not queued
    assert again.title == "spl_2 title"
    assert "picked up for delivery" in again.events()[0].message
    assert tracer.find(queued.id) is queued  # kept in the rings


def test_followed_messages_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(traces, "MAX_MESSAGES_FOLLOWED", 3)
    monkeypatch.setattr(traces, "MAX_ACTIVE_LISTED", 2)
    tracer = Tracer()
    followed = [_queue(tracer, f"spl_{n}") for n in range(5)]
    tracer.message_trace("spl_2")  # touched: the least recent now is spl_3
    _queue(tracer, "spl_5")
    assert [t.finished for t in followed] == [True, True, False, True, False]
    assert "no longer followed" in followed[0].events()[-1].message
    assert tracer.find(followed[4].id) is followed[4]  # followed, though not listed
    assert tracer.families["message"].unlisted_active == 1


def test_event_lines_escape_each_line_and_are_cut() -> None:
    tracer = Tracer()
    trace = tracer.start("relay.dialogue", "x")
    trace.event_lines(["S: 250-first " + HOSTILE, "   250 last"])
    trace.event_lines(["y" * 200] * 10, is_error=True)
    first, second = trace.events()
    lines = first.message.split("\n")
    assert len(lines) == 2
    assert all(line.isprintable() for line in lines)
    assert "\\r\\nS: 250 forged" in lines[0]
    assert second.is_error
    assert trace.errored
    assert len(second.message) < MAX_MESSAGE_CHARS + 40
    assert second.message.endswith("more characters)")


def test_commands_are_shown_with_arguments_and_credentials_redacted() -> None:
    assert command_line(Ehlo("client.example")) == "C: EHLO client.example"
    mail = Mail("a@example.test", size=10, body="8BITMIME", params={"ENVID": "x1"})
    assert command_line(mail) == "C: MAIL FROM:<a@example.test> SIZE=10 BODY=8BITMIME ENVID=x1"
    assert command_line(Rcpt("b@example.test")) == "C: RCPT TO:<b@example.test>"
    assert command_line(Auth("PLAIN", "AGFsaWNlAHNlY3JldA==")) == "C: AUTH PLAIN <redacted>"
    assert command_line(Auth("LOGIN")) == "C: AUTH LOGIN"
    assert command_line(AuthResponse("c2VjcmV0")) == "C: <redacted> (AUTH response)"
    assert command_line(AuthResponse("*")) == "C: * (AUTH cancelled)"
    refused = CommandError("MAIL", Reply.of(501, "syntax"))
    assert command_line(refused) == "C: MAIL (refused as sent)"
    assert command_line(Rcpt("b@x\r\nRSET")) == "C: RCPT (not sendable)"


def test_replies_show_every_line_with_code_and_enhanced_code() -> None:
    reply = Reply(250, ("mx.example greets you", "PIPELINING", "SIZE 1000"), None)
    assert reply_lines(reply) == [
        "S: 250-mx.example greets you",
        "   250-PIPELINING",
        "   250 SIZE 1000",
    ]
    assert reply_lines(Reply.of(550, "no such user", enhanced="5.1.1")) == [
        "S: 550 5.1.1 no such user"
    ]
    hostile = Reply.of(554, "bad \u202e\u2028 text")
    assert all(line.isprintable() for line in reply_lines(hostile))


def test_tls_facts_say_what_was_agreed() -> None:
    facts = TlsFacts("TLSv1.3", "TLS_AES_128_GCM_SHA256", 128, "mail.example.test")
    assert facts.text() == (
        "TLS established: TLSv1.3, TLS_AES_128_GCM_SHA256 (128 bits), SNI mail.example.test"
    )
    assert "no SNI" in TlsFacts("TLSv1.2", "X", 256, None).text()
    outbound = TlsFacts("TLSv1.3", "X", 256, "192.0.2.1", verified=False)
    assert "no SNI (server 192.0.2.1 is an address)" in outbound.text()
    assert outbound.text().endswith("certificate not verified")


def test_a_trace_page_escapes_its_links() -> None:
    tracer = Tracer()
    parent = tracer.start("api.request", HOSTILE)
    message = parent.child("message", HOSTILE)
    for page in (trace_pages.trace_page(parent), trace_pages.trace_page(message)):
        assert "<script>" not in page
        assert "&lt;script&gt;" in page
    assert f'href="traces?id={message.id}"' in trace_pages.trace_page(parent)
    assert f'href="traces?id={parent.id}"' in trace_pages.trace_page(message)
