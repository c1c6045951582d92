"""The ``local`` relay through the relay set, capturing into a real spool (the capture sink)."""

from __future__ import annotations

from pathlib import Path

from dispatch.config import Settings
from dispatch.relays.base import DeliveryRequest
from dispatch.relays.registry import RelaySet
from dispatch.spool import Spool
from dispatch.spool.testing import commit


def request(spool: Spool, message_id: str, path: Path | None = None) -> DeliveryRequest:
    return DeliveryRequest(
        message_id=message_id,
        mail_from="sender@example.test",
        recipients=("a@example.test", "b@example.test"),
        message_path=path or spool.directory / "missing.eml",
        size=10,
    )


async def test_the_local_relay_captures_into_the_sink_it_was_handed(tmp_path: Path) -> None:
    spool = await Spool.open(tmp_path / "spool")
    body = b"Subject: local\r\n\r\nhi\r\n"
    envelope = await commit(spool, body)
    await spool.claim(envelope.id)
    relays = RelaySet(Settings, spool)
    [relay] = relays.all()
    assert relay.kind == "local"
    result = await relay.deliver(request(spool, envelope.id, spool.message_path(envelope.id)))
    assert [o.outcome for o in result.outcomes] == ["delivered", "delivered"]
    captured = tmp_path / "spool" / "captured" / f"{envelope.id}.eml"
    assert result.outcomes[0].response == f"captured as {captured}"
    assert (spool.directory / "captured" / f"{envelope.id}.eml").read_bytes() == body
    assert (relay.delivered, relay.failed, relay.inflight) == (1, 0, 0)
    await relays.aclose()


async def test_a_capture_that_fails_is_a_transient_outcome_saying_why(tmp_path: Path) -> None:
    spool = await Spool.open(tmp_path / "spool")
    relays = RelaySet(Settings, spool)
    relay = relays.get("local")
    gone = "spl_01hzzzzzzzzzzzzzzzzzzzzzzz"
    result = await relay.deliver(request(spool, gone))
    assert [o.outcome for o in result.outcomes] == ["transient", "transient"]
    assert result.outcomes[0].response.startswith("relay local: no message ")
    assert gone in result.outcomes[0].response
    assert (relay.delivered, relay.failed, relay.inflight) == (0, 1, 0)
    assert not any((spool.directory / "captured").iterdir())
    await relays.aclose()
