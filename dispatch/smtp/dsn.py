"""The SMTP Service Extension for Delivery Status Notifications: its parameters (RFC 3461).

Sans-IO, like the rest of the core: the MAIL parameters ``RET`` and ``ENVID`` and the RCPT
parameters ``NOTIFY`` and ``ORCPT`` are checked and decoded here, on both sides of a session
(the server reads them, a relay writes them again for an upstream that offers ``DSN``). What a
server does with them — whether a notification is sent — is policy, not the core's.

Values travel as ``xtext`` (RFC 3461 §4): printable US-ASCII except ``+`` and ``=``, with
``+XX`` (two upper-case hex digits) standing for any other octet. Decoded values are kept as
text; :func:`xtext_encode` turns them back into the wire form.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from .replies import Reply

__all__ = [
    "NOTIFY_VALUES",
    "MailDsn",
    "RcptDsn",
    "mail_dsn",
    "mail_params",
    "rcpt_dsn",
    "rcpt_params",
    "xtext_decode",
    "xtext_encode",
]

Ret = Literal["FULL", "HDRS"]
NOTIFY_VALUES: Final = frozenset({"NEVER", "SUCCESS", "FAILURE", "DELAY"})
# RFC 3461 §4: xchar is "!" through "~" except "+" and "="; hexchar is "+" and 2 upper hex.
_XTEXT: Final = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})*")
_HEXCHAR: Final = re.compile(r"\+([0-9A-F]{2})")
# RFC 3461 §4.2: ENVID is at most 100 characters; §4.4 (ORCPT): the whole parameter value at
# most 500. The limits are on the xtext form as sent.
MAX_ENVID: Final = 100
MAX_ORCPT: Final = 500
# RFC 3461 §4.2 addr-type is an atom (RFC 5321's Atom is enough here).
_ADDR_TYPE: Final = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+")

_BAD_XTEXT: Final = Reply.of(501, "Parameter value is not valid xtext (RFC 3461 §4)",
                             enhanced="5.5.4")  # fmt: skip
_BAD_NOTIFY: Final = Reply.of(
    501, "NOTIFY takes NEVER alone, or any of SUCCESS, FAILURE, DELAY (RFC 3461 §4.1)",
    enhanced="5.5.4",
)  # fmt: skip
_BAD_RET: Final = Reply.of(501, "RET takes FULL or HDRS (RFC 3461 §4.3)", enhanced="5.5.4")
_BAD_ENVID: Final = Reply.of(501, "ENVID must be xtext of at most 100 characters (RFC 3461 §4.4)",
                             enhanced="5.5.4")  # fmt: skip
_BAD_ORCPT: Final = Reply.of(
    501, "ORCPT takes addr-type;xtext, at most 500 characters (RFC 3461 §4.2)", enhanced="5.5.4"
)


def xtext_decode(text: str) -> str:
    """The text an xtext value stands for; ``ValueError`` when ``text`` is not xtext.

    Decoded octets are read as UTF-8 (an RFC 6533 ``utf-8`` address type may carry them),
    with ``surrogateescape`` so that no byte is lost.
    """
    if not _XTEXT.fullmatch(text):
        raise ValueError(f"{text!r} is not xtext (RFC 3461 §4)")
    raw = _HEXCHAR.sub(lambda m: chr(int(m.group(1), 16)), text)
    return raw.encode("latin-1").decode("utf-8", "surrogateescape")


def xtext_encode(text: str) -> str:
    """``text`` as xtext: ``+``, ``=``, controls, space and non-ASCII octets as ``+XX``."""
    out: list[str] = []
    for byte in text.encode("utf-8", "surrogateescape"):
        char = chr(byte)
        if 0x21 <= byte <= 0x7E and char not in "+=":
            out.append(char)
        else:
            out.append(f"+{byte:02X}")
    return "".join(out)


@dataclass(frozen=True, slots=True, init=False)
class MailDsn:
    """RET and ENVID of one MAIL command (``None``: not given)."""

    ret: Ret | None
    envid: str | None  # decoded from xtext

    def __init__(self, ret: Ret | None = None, envid: str | None = None) -> None:
        object.__setattr__(self, "ret", ret)  # see events.py, "Made per command"
        object.__setattr__(self, "envid", envid)


@dataclass(frozen=True, slots=True, init=False)
class RcptDsn:
    """NOTIFY and ORCPT of one RCPT command (``None``: not given).

    ``notify`` is a tuple of the upper-cased keywords as given (``("NEVER",)`` or some of
    SUCCESS, FAILURE, DELAY); without NOTIFY a server behaves as for ``FAILURE`` and may
    send ``DELAY`` (RFC 3461 §4.1). ``orcpt`` is ``addr-type;address`` with the address
    decoded from xtext.
    """

    notify: tuple[str, ...] | None
    orcpt: str | None

    def __init__(self, notify: tuple[str, ...] | None = None, orcpt: str | None = None) -> None:
        object.__setattr__(self, "notify", notify)  # see events.py, "Made per command"
        object.__setattr__(self, "orcpt", orcpt)

    def wants(self, kind: Literal["SUCCESS", "FAILURE", "DELAY"]) -> bool:
        """Does this recipient's sender want a notification of ``kind``?"""
        if self.notify is None:
            return kind in ("FAILURE", "DELAY")
        return kind in self.notify


def mail_dsn(params: Mapping[str, str | None]) -> MailDsn | Reply:
    """RET and ENVID read from MAIL parameters (keys upper-cased), or the 501 to send."""
    ret_value, envid_value = params.get("RET"), params.get("ENVID")
    ret: Ret | None = None
    if "RET" in params:
        upper = (ret_value or "").upper()
        if upper == "FULL":
            ret = "FULL"
        elif upper == "HDRS":
            ret = "HDRS"
        else:
            return _BAD_RET
    envid: str | None = None
    if "ENVID" in params:
        if envid_value is None or len(envid_value) > MAX_ENVID:
            return _BAD_ENVID
        try:
            envid = xtext_decode(envid_value)
        except ValueError:
            return _BAD_ENVID
    return MailDsn(ret, envid)


def rcpt_dsn(params: Mapping[str, str | None]) -> RcptDsn | Reply:
    """NOTIFY and ORCPT read from RCPT parameters (keys upper-cased), or the 501 to send."""
    notify: tuple[str, ...] | None = None
    if "NOTIFY" in params:
        value = params["NOTIFY"]
        items = tuple(item.upper() for item in (value or "").split(","))
        if (
            not value
            or any(item not in NOTIFY_VALUES for item in items)
            or len(set(items)) != len(items)
            or ("NEVER" in items and len(items) > 1)
        ):
            return _BAD_NOTIFY
        notify = items
    orcpt: str | None = None
    if "ORCPT" in params:
        value = params["ORCPT"]
        if value is None or len(value) > MAX_ORCPT:
            return _BAD_ORCPT
        addr_type, semicolon, address = value.partition(";")
        if not semicolon or not _ADDR_TYPE.fullmatch(addr_type) or not address:
            return _BAD_ORCPT
        try:
            orcpt = f"{addr_type};{xtext_decode(address)}"
        except ValueError:
            return _BAD_XTEXT
    return RcptDsn(notify, orcpt)


def mail_params(dsn: MailDsn) -> dict[str, str | None]:
    """The MAIL parameters that carry ``dsn`` to an upstream offering DSN (xtext-encoded)."""
    params: dict[str, str | None] = {}
    if dsn.ret is not None:
        params["RET"] = dsn.ret
    if dsn.envid is not None:
        params["ENVID"] = xtext_encode(dsn.envid)
    return params


def rcpt_params(dsn: RcptDsn) -> dict[str, str | None]:
    """The RCPT parameters that carry ``dsn`` to an upstream offering DSN (xtext-encoded)."""
    params: dict[str, str | None] = {}
    if dsn.notify is not None:
        params["NOTIFY"] = ",".join(dsn.notify)
    if dsn.orcpt is not None:
        addr_type, _, address = dsn.orcpt.partition(";")
        params["ORCPT"] = f"{addr_type};{xtext_encode(address)}"
    return params
