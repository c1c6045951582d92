"""The intake link's delivery messages: a relay dialogue handed to a worker process and back.

The main process keeps every piece of a message's state (claims, the index, the message log,
bounces, suppression, webhooks, traces) and hands a worker only the relay dialogue: reading
the message, DKIM signing and the SMTP conversation with the upstream
(``delivery/relay_lane.py`` says when and why). These are the kinds that carry it, framed and
decoded like every other kind of ``intake/link.py`` (strictly: exact fields, checked types;
nothing pickled):

- main → worker: :class:`RelaysChanged` (the ``smtp`` relays, the ``[[dkim]]`` keys and the
  HELO name, as TOML tables re-read by the loader), :class:`Deliver` (one request, under a
  token the main process chose) and :class:`Cancel` (that request's attempt was cancelled);
- worker → main: :class:`Handed` (the token's result, the relay's dialogue traces, and
  whether the relay is suspended now).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Final, Self, get_args

import attrs
import cattrs

from dispatch.config.loader import ConfigError, parse_settings
from dispatch.config.settings import DkimKey, SmtpRelay
from dispatch.config.types import Secret
from dispatch.relays.base import (
    DeliveryRequest,
    DeliveryResult,
    Outcome,
    RecipientOutcome,
)
from dispatch.smtp.dsn import MailDsn, RcptDsn, Ret

_TABLES: Final = cattrs.Converter()
_TABLES.register_unstructure_hook(Secret, Secret.reveal)
_OUTCOMES: Final = frozenset(get_args(Outcome))
_RETS: Final = frozenset(get_args(Ret))
MAX_DIALOGUE_EVENTS: Final = 400  # a trace keeps 200; anything beyond is not a trace's


def _text(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name}: expected a string, got {type(value).__name__}")
    return value


def _optional_text(value: object, name: str) -> str | None:
    return None if value is None else _text(value, name)


def _token(value: object) -> int:
    if type(value) is not int or value < 0:
        raise TypeError(f"token: expected a non-negative integer, got {value!r:.50}")
    return value


def _object(value: object, name: str, keys: frozenset[str]) -> Mapping[str, Any]:
    """``value`` as an object with exactly ``keys``."""
    if not isinstance(value, dict):
        raise TypeError(f"{name}: expected an object, got {type(value).__name__}")
    if missing := sorted(keys - value.keys()):
        raise ValueError(f"{name}: without {', '.join(missing)}")
    if extra := sorted(value.keys() - keys):
        raise ValueError(f"{name}: with unknown field(s) {', '.join(extra)}")
    return value


def _list(value: object, name: str) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError(f"{name}: expected a list, got {type(value).__name__}")
    return value


# --- main → worker ---------------------------------------------------------------------------


@attrs.frozen
class RelaysChanged:
    """main → worker, after :class:`~dispatch.intake.link.Start` and after each reload that
    changes them: the ``smtp`` relays the worker runs dialogues for, the ``[[dkim]]`` keys
    they sign with, and the HELO name (``listener.server_name``) they fall back to."""

    KIND: ClassVar = "relays_changed"
    relays: tuple[SmtpRelay, ...]
    dkim: tuple[DkimKey, ...]
    helo_name: str

    def fields(self) -> dict[str, object]:
        return {
            "relays": [_TABLES.unstructure(relay) for relay in self.relays],
            "dkim": [_TABLES.unstructure(key) for key in self.dkim],
            "helo_name": self.helo_name,
        }

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Self:
        relays = _list(fields["relays"], "relays")
        dkim = _list(fields["dkim"], "dkim")
        helo_name = _text(fields["helo_name"], "helo_name")
        if not relays:  # the loader wants one relay at least; none is a valid push here
            relays = [{"name": "none", "kind": "local"}]
        document = {"relays": relays, "dkim": dkim, "default_relay": ""}
        if len(relays) > 1:
            first = relays[0]
            document["default_relay"] = first.get("name", "") if isinstance(first, dict) else ""
        try:
            settings = parse_settings(document, "the relay settings")
        except ConfigError as exc:
            raise ValueError("; ".join(map(str, exc.problems))) from None
        smtp = tuple(r for r in settings.relays if isinstance(r, SmtpRelay))
        if fields["relays"] and len(smtp) != len(settings.relays):
            raise ValueError("relays: only kind 'smtp' relays run in a worker process")
        return cls(smtp, settings.dkim, helo_name)


def _dsn_fields(request: DeliveryRequest) -> dict[str, object]:
    return {
        "ret": request.mail_dsn.ret,
        "envid": request.mail_dsn.envid,
        "recipients": {
            recipient: [None if dsn.notify is None else list(dsn.notify), dsn.orcpt]
            for recipient, dsn in request.recipient_dsn.items()
        },
    }


_DSN_KEYS: Final = frozenset({"ret", "envid", "recipients"})
_REQUEST_KEYS: Final = frozenset(
    {"message_id", "mail_from", "recipients", "message_path", "size", "smtputf8", "prefix", "dsn"}
)


def _rcpt_dsn(recipient: str, value: object) -> RcptDsn:
    match value:
        case [None, str() | None as orcpt]:
            return RcptDsn(None, orcpt)
        case [list() as notify, str() | None as orcpt] if all(isinstance(n, str) for n in notify):
            return RcptDsn(tuple(notify), orcpt)
    raise TypeError(
        f"request.dsn.recipients[{recipient!r}]: expected [notify, orcpt], got {value!r:.100}"
    )


def _request(value: object) -> DeliveryRequest:
    fields = _object(value, "request", _REQUEST_KEYS)
    recipients = tuple(
        _text(r, "request.recipients[]") for r in _list(fields["recipients"], "request.recipients")
    )
    size = fields["size"]
    if type(size) is not int or size < 0:
        raise TypeError(f"request.size: expected a non-negative integer, got {size!r:.50}")
    smtputf8 = fields["smtputf8"]
    if not isinstance(smtputf8, bool):
        raise TypeError(f"request.smtputf8: expected true or false, got {smtputf8!r:.50}")
    try:
        prefix = base64.b64decode(_text(fields["prefix"], "request.prefix"), validate=True)
    except binascii.Error as exc:
        raise ValueError(f"request.prefix: not base64 ({exc})") from None
    dsn = _object(fields["dsn"], "request.dsn", _DSN_KEYS)
    ret = dsn["ret"]
    if ret is not None and ret not in _RETS:
        raise ValueError(
            f"request.dsn.ret: expected one of {sorted(_RETS)} or null, got {ret!r:.50}"
        )
    rcpt = dsn["recipients"]
    if not isinstance(rcpt, dict):
        raise TypeError(f"request.dsn.recipients: expected an object, got {type(rcpt).__name__}")
    recipient_dsn = {recipient: _rcpt_dsn(recipient, item) for recipient, item in rcpt.items()}
    if unknown := sorted(set(recipient_dsn) - set(recipients)):
        raise ValueError(f"request.dsn.recipients: not recipients of the request: {unknown}")
    path = _text(fields["message_path"], "request.message_path")
    if not path:
        raise ValueError("request.message_path: empty")
    return DeliveryRequest(
        message_id=_text(fields["message_id"], "request.message_id"),
        mail_from=_text(fields["mail_from"], "request.mail_from"),
        recipients=recipients,
        message_path=Path(path),
        size=size,
        smtputf8=smtputf8,
        prefix=prefix,
        mail_dsn=MailDsn(ret, _optional_text(dsn["envid"], "request.dsn.envid")),
        recipient_dsn=recipient_dsn,
    )


@attrs.frozen
class Deliver:
    """main → worker: run ``request`` through the worker's relay ``relay`` and answer
    :class:`Handed` with the same ``token``. The request carries the message's path, not its
    bytes: the worker reads the spooled file itself (it stays claimed by the main process)."""

    KIND: ClassVar = "deliver"
    token: int
    relay: str
    request: DeliveryRequest

    def fields(self) -> dict[str, object]:
        request = self.request
        return {
            "token": self.token,
            "relay": self.relay,
            "request": {
                "message_id": request.message_id,
                "mail_from": request.mail_from,
                "recipients": list(request.recipients),
                "message_path": str(request.message_path),
                "size": request.size,
                "smtputf8": request.smtputf8,
                "prefix": base64.b64encode(request.prefix).decode("ascii"),
                "dsn": _dsn_fields(request),
            },
        }

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Self:
        return cls(
            _token(fields["token"]), _text(fields["relay"], "relay"), _request(fields["request"])
        )


@attrs.frozen
class Cancel:
    """main → worker: the attempt behind ``token`` was cancelled (the main process is
    stopping); the worker cancels the relay call, which drops its connection."""

    KIND: ClassVar = "cancel"
    token: int

    def fields(self) -> dict[str, object]:
        return {"token": self.token}

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Self:
        return cls(_token(fields["token"]))


# --- worker → main ---------------------------------------------------------------------------


@attrs.frozen
class Dialogue:
    """One ``relay.dialogue`` trace a relay kept in the worker: replayed into the main
    process's trace of the attempt. ``events``: (offset in seconds, text, is an error)."""

    title: str
    duration: float
    events: tuple[tuple[float, str, bool], ...]


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise TypeError(f"{name}: expected a non-negative number, got {value!r:.50}")
    return float(value)


def _event(value: object) -> tuple[float, str, bool]:
    match value:
        case [offset, str() as text, bool() as is_error]:
            return (_number(offset, "dialogues[].events[].offset"), text, is_error)
    raise TypeError(f"dialogues[].events[]: expected [offset, text, is error], got {value!r:.100}")


def _dialogue(value: object) -> Dialogue:
    match value:
        case [str() as title, duration, list() as events]:
            if len(events) > MAX_DIALOGUE_EVENTS:
                raise ValueError(f"dialogues[]: {len(events)} events, more than a trace keeps")
            kept = tuple(_event(event) for event in events)
            return Dialogue(title, _number(duration, "dialogues[].duration"), kept)
    raise TypeError(f"dialogues[]: expected [title, duration, events], got {value!r:.100}")


def _outcome(value: object) -> RecipientOutcome:
    match value:
        case [str() as recipient, str() as outcome, str() as response] if outcome in _OUTCOMES:
            return RecipientOutcome(recipient, outcome, response)  # type: ignore[arg-type]
    raise TypeError(
        f"result.outcomes[]: expected [recipient, delivered|transient|permanent, response], "
        f"got {value!r:.100}"
    )


_RESULT_KEYS: Final = frozenset({"outcomes", "remote_id", "dsn_passed", "remote_mta"})


@attrs.frozen
class Handed:
    """worker → main: what became of :class:`Deliver` ``token`` — the relay's result, its
    dialogue traces, and why the worker's relay is suspended now (None: it is not)."""

    KIND: ClassVar = "handed"
    token: int
    result: DeliveryResult
    dialogues: tuple[Dialogue, ...] = ()
    suspended: str | None = None

    def fields(self) -> dict[str, object]:
        result = self.result
        return {
            "token": self.token,
            "result": {
                "outcomes": [[o.recipient, o.outcome, o.response] for o in result.outcomes],
                "remote_id": result.remote_id,
                "dsn_passed": result.dsn_passed,
                "remote_mta": result.remote_mta,
            },
            "dialogues": [
                [d.title, d.duration, [list(event) for event in d.events]] for d in self.dialogues
            ],
            "suspended": self.suspended,
        }

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Self:
        result = _object(fields["result"], "result", _RESULT_KEYS)
        dsn_passed = result["dsn_passed"]
        if not isinstance(dsn_passed, bool):
            raise TypeError(f"result.dsn_passed: expected true or false, got {dsn_passed!r:.50}")
        outcomes = tuple(_outcome(o) for o in _list(result["outcomes"], "result.outcomes"))
        return cls(
            _token(fields["token"]),
            DeliveryResult(
                outcomes,
                remote_id=_optional_text(result["remote_id"], "result.remote_id"),
                dsn_passed=dsn_passed,
                remote_mta=_optional_text(result["remote_mta"], "result.remote_mta"),
            ),
            tuple(_dialogue(d) for d in _list(fields["dialogues"], "dialogues")),
            _optional_text(fields["suspended"], "suspended"),
        )
