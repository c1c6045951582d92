"""Test helpers for the spool: commit like intake does, fake crash leftovers, read the disk.

For tests only (this package's and those of intake and delivery, which want to check what
landed in a spool); nothing in the daemon imports it. The disk readers list directories,
which production code never does after start-up.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from dispatch.spool import Envelope, MessageState, Spool, new_id
from dispatch.spool.layout import attached_envelope

STATES = tuple(MessageState)


async def commit(
    spool: Spool,
    body: bytes = b"Subject: hi\r\n\r\nhello\r\n",
    *,
    recipients: Iterable[str] = ("rcpt@example.test",),
    chunk_size: int = 64 * 1024,
    **fields: object,
) -> Envelope:
    """Receive ``body`` in chunks and commit it, like intake does."""
    async with spool.begin() as message:
        for start in range(0, len(body), chunk_size):
            await message.write(body[start : start + chunk_size])
        options: dict[str, object] = {
            "mail_from": "sender@example.test",
            "source": "smtp",
            "peer_ip": "192.0.2.7",
        }
        options.update(fields)
        return await message.commit(recipients=recipients, **options)  # type: ignore[arg-type]


def disk_state(root: Path) -> dict[str, tuple[set[MessageState], set[MessageState]]]:
    """Per id: the state directories holding its envelope and those holding its ``.eml``.

    The envelope is the ``.json``, or for a one-file message the ``.eml``'s attribute.
    """
    found: dict[str, tuple[set[MessageState], set[MessageState]]] = {}
    for state in STATES:
        for path in (root / state.value).iterdir():
            jsons, emls = found.setdefault(path.stem, (set(), set()))
            (jsons if path.suffix == ".json" else emls).add(state)
            if path.suffix == ".eml" and attached_envelope(path) is not None:
                jsons.add(state)
    return found


def envelope_ids(directory: Path) -> set[str]:
    """Ids of the messages whose envelope is in ``directory`` (``.json`` or attribute)."""
    ids = {p.stem for p in directory.glob("*.json")}
    ids.update(p.stem for p in directory.glob("*.eml") if attached_envelope(p) is not None)
    return ids


def read_envelope(directory: Path, message_id: str) -> Envelope:
    """The envelope of a message in ``directory``, in whichever form it is stored."""
    json_path = directory / f"{message_id}.json"
    if json_path.exists():
        return Envelope.from_json(json_path.read_bytes(), path=json_path)
    eml_path = directory / f"{message_id}.eml"
    data = attached_envelope(eml_path)
    assert data is not None, f"{message_id}: no envelope in {directory}"
    return Envelope.from_json(data, path=eml_path)


def placed(root: Path, *, ignore: Iterable[str] = ()) -> dict[str, MessageState]:
    """Id -> state for a disk where every message is whole; fails on anything else.

    ``ignore`` names ids to leave out (a bodiless envelope parked in failed/, say).
    """
    result: dict[str, MessageState] = {}
    skip = set(ignore)
    for message_id, (jsons, emls) in disk_state(root).items():
        if message_id in skip:
            continue
        assert len(jsons) == 1, f"{message_id}: envelope in {jsons}"
        assert jsons == emls, f"{message_id}: envelope in {jsons}, body in {emls}"
        result[message_id] = next(iter(jsons))
    return result


def write_pair(
    root: Path,
    state: MessageState,
    body: bytes = b"body\r\n",
    *,
    eml_state: MessageState | None = None,
    with_eml: bool = True,
    with_json: bool = True,
    **fields: object,
) -> Envelope:
    """Write a message's files by hand, as a crash could have left them."""
    options: dict[str, object] = {
        "id": new_id(),
        "mail_from": "a@example.test",
        "recipients": ("b@example.test",),
        "source": "api",
        "peer_ip": None,
        "auth_identity": "key_abc",
        "tags": (),
        "received_at": 1.0e9,
        "size": len(body),
        "next_attempt_at": 1.0e9,
    }
    options.update(fields)
    envelope = Envelope(**options)  # type: ignore[arg-type]
    for directory in STATES:
        (root / directory.value).mkdir(parents=True, exist_ok=True)
    if with_json:
        (root / state.value / f"{envelope.id}.json").write_bytes(envelope.to_json())
    if with_eml:
        (root / (eml_state or state).value / f"{envelope.id}.eml").write_bytes(body)
    return envelope


def tmp_files(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "tmp").iterdir())
