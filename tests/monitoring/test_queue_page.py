"""The ``/debug/queue`` rows and forms, from envelopes built by hand: every recipient state,
the planned route of a recipient not tried yet, envelopes from before deferrals were recorded,
the text form's columns and its escapes."""

from __future__ import annotations

from pathlib import Path

from dispatch.config.settings import RouteSettings
from dispatch.config.types import RelayChoice
from dispatch.delivery.routing import Router
from dispatch.monitoring import queue_page
from dispatch.spool import Deferral, Envelope, RecipientResult, SpoolCounts, SpoolEntry, new_id
from dispatch.spool.captured import CapturedCopy, CapturedListing
from dispatch.spool.layout import MessageState

NOW = 1_800_000_000.0
COUNTS = SpoolCounts(incoming=1, retrying=1, processing=0, failed=1, total_bytes=10)


def envelope(recipients: tuple[str, ...], **fields: object) -> Envelope:
    values: dict[str, object] = {
        "id": new_id(),
        "mail_from": "app@example.test",
        "recipients": recipients,
        "source": "smtp",
        "peer_ip": "127.0.0.1",
        "auth_identity": None,
        "tags": (),
        "received_at": NOW - 3725,
        "size": 10,
    }
    values.update(fields)
    return Envelope(**values)  # type: ignore[arg-type]


def columns(text: str) -> list[dict[str, str]]:
    """The text form's rows as {header: cell}, cut at the header's column starts."""
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    header = lines[0]
    starts = [header.index(name) for name in queue_page.TEXT_COLUMNS]
    ends = [*starts[1:], None]
    return [
        {
            name: line[start:end].strip()
            for name, start, end in zip(queue_page.TEXT_COLUMNS, starts, ends, strict=True)
        }
        for line in lines[1:]
    ]


def test_each_recipient_has_its_own_state_reply_relay_and_route() -> None:
    retrying = envelope(
        ("ok@example.test", "no@example.test", "wait@example.test"),
        attempts=1,
        next_attempt_at=NOW + 300,
        recipient_results={
            "ok@example.test": RecipientResult(
                "delivered", "250 2.0.0 queued", "up", 1.0, "default"
            ),
            "no@example.test": RecipientResult("failed", "550 5.1.1 unknown", "up", 1.0, "default"),
        },
        deferrals={"wait@example.test": Deferral("451 4.3.0 later", "up", "routes[0]", 2.0)},
    )
    exhausted = envelope(
        ("gone@example.test",),
        attempts=6,
        deferrals={"gone@example.test": Deferral("421 4.4.2 timeout", "up", "default", 3.0)},
    )
    entries = [
        SpoolEntry(MessageState.FAILED, exhausted),
        SpoolEntry(MessageState.INCOMING, retrying),
    ]
    chosen, matching = queue_page.select_entries(entries, None, 10)
    assert [e.state for e in chosen] == [MessageState.INCOMING, MessageState.FAILED]
    view = queue_page.QueueView(queue_page.message_rows(chosen), matching, None, COUNTS)
    rows = columns(queue_page.queue_text(view, now=NOW))
    by_recipient = {row["RECIPIENT"]: row for row in rows}
    assert by_recipient["ok@example.test"]["RCPT_STATE"] == "delivered"
    assert by_recipient["ok@example.test"]["REPLY"] == "250 2.0.0 queued"
    assert by_recipient["no@example.test"]["RCPT_STATE"] == "failed"
    assert by_recipient["no@example.test"]["REPLY"] == "550 5.1.1 unknown"
    assert by_recipient["wait@example.test"]["RCPT_STATE"] == "retrying"
    assert by_recipient["wait@example.test"]["ROUTE"] == "routes[0]"
    assert by_recipient["wait@example.test"]["RELAY"] == "up"
    assert by_recipient["wait@example.test"]["NEXT"] == "+5m00s"
    assert by_recipient["wait@example.test"]["AGE"] == "1h02m"
    assert by_recipient["gone@example.test"]["RCPT_STATE"] == "exhausted"
    assert by_recipient["gone@example.test"]["STATE"] == "failed"
    assert by_recipient["gone@example.test"]["NEXT"] == "-"


def test_a_recipient_not_tried_yet_shows_the_route_the_current_routes_choose() -> None:
    routes = [RouteSettings(recipient_domain="special.test", relay=RelayChoice(("fast", "slow")))]
    router = Router(routes, "default-relay")
    waiting = envelope(("a@special.test", "b@other.test"), next_attempt_at=NOW - 1)
    rows = queue_page.message_rows([SpoolEntry(MessageState.INCOMING, waiting)], router)
    first, second = rows[0].recipients
    assert (first.state, first.relay, first.route, first.planned) == (
        "pending",
        "fast then slow",
        "routes[0]",
        True,
    )
    assert (second.relay, second.route) == ("default-relay", "default")
    view = queue_page.QueueView(rows, 1, "incoming", COUNTS)
    text = columns(queue_page.queue_text(view, now=NOW))
    assert text[1]["RELAY"] == "default-relay*"
    assert text[0]["NEXT"] == "now"
    html = queue_page.queue_html(view, now=NOW)
    assert 'class="planned"' in html
    assert "due now" in html


def test_an_envelope_from_before_deferrals_shows_its_part_of_last_error() -> None:
    old = envelope(
        ("a@example.test", "b@example.test"),
        attempts=2,
        next_attempt_at=NOW + 60,
        last_error="a@example.test: 451 greylisted; b@example.test: connection refused",
    )
    rows = queue_page.message_rows([SpoolEntry(MessageState.INCOMING, old)])
    assert [(r.state, r.reply) for r in rows[0].recipients] == [
        ("retrying", "451 greylisted"),
        ("retrying", "connection refused"),
    ]


def test_text_form_escapes_control_characters_and_keeps_columns_aligned() -> None:
    hostile = envelope(
        ("x@example.test", "longer.address@example.test"),
        attempts=1,
        next_attempt_at=NOW + 5,
        deferrals={
            "x@example.test": Deferral("451 \x1b[31mred\r\nfake line", "up", "default", 1.0)
        },
    )
    view = queue_page.QueueView(
        queue_page.message_rows([SpoolEntry(MessageState.INCOMING, hostile)]), 1, None, COUNTS
    )
    text = queue_page.queue_text(view, now=NOW)
    assert "\x1b" not in text
    assert "\r" not in text
    assert "\\x1b[31mred\\r\\nfake line" in text
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert len(lines) == 3  # the header and one line per recipient: no forged line
    # both recipients are retrying: their state words start where the header's column does
    state_column = {line.index(" retrying ") for line in lines[1:]}
    assert state_column == {lines[0].index(" RCPT_STATE ")}


def test_captured_copies_are_rows_in_the_captured_state(tmp_path: Path) -> None:
    kept = envelope(("in@example.test",))
    listing = CapturedListing(
        tmp_path, 3, 0, (CapturedCopy(kept, NOW - 10, tmp_path / f"{kept.id}.eml"),)
    )
    rows = queue_page.captured_rows(listing)
    view = queue_page.QueueView(rows, listing.total, "captured", COUNTS, captured=3)
    text = queue_page.queue_text(view, now=NOW)
    (row,) = columns(text)
    assert (row["STATE"], row["RCPT_STATE"]) == ("captured", "captured")
    assert row["REPLY"] == f"captured as {tmp_path / kept.id}.eml"
    assert "the first 1 shown" in text
