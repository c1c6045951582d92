"""The DSN extension's parameters in the sans-IO core (RFC 3461 §4): xtext, NOTIFY, ORCPT,
RET, ENVID, parsed from command lines and written back for an upstream."""

from __future__ import annotations

import pytest

from dispatch.smtp import Limits, Reply
from dispatch.smtp.commands import parse_command
from dispatch.smtp.dsn import (
    MailDsn,
    RcptDsn,
    mail_dsn,
    mail_params,
    rcpt_dsn,
    rcpt_params,
    xtext_decode,
    xtext_encode,
)
from dispatch.smtp.events import CommandError, Mail, Rcpt


@pytest.mark.parametrize(
    ("xtext", "text"),
    [
        ("", ""),
        ("plain", "plain"),
        ("a+2Bb", "a+b"),  # "+" itself
        ("a+3Db", "a=b"),  # "="
        ("x+20y", "x y"),  # space
        ("user+40example.org", "user@example.org"),
        ("caf+C3+A9", "café"),  # UTF-8 octets (RFC 6533 utf-8 addresses)
    ],
)
def test_xtext_decodes_and_encodes_back(xtext: str, text: str) -> None:
    assert xtext_decode(xtext) == text
    assert xtext_decode(xtext_encode(text)) == text


def test_xtext_encoding_escapes_exactly_plus_equals_controls_space_and_8bit() -> None:
    assert xtext_encode("a+b=c d\x01é~!") == "a+2Bb+3Dc+20d+01+C3+A9~!"


@pytest.mark.parametrize("bad", ["a+", "a+2", "a+2b", "a+zz", "a=b", "a b", "é", "a\x7f"])
def test_not_xtext_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="not xtext"):
        xtext_decode(bad)


def test_mail_parameters_decoded() -> None:
    assert mail_dsn({"RET": "hdrs", "ENVID": "QQ+2B1"}) == MailDsn("HDRS", "QQ+1")
    assert mail_dsn({"RET": "FULL"}) == MailDsn("FULL", None)
    assert mail_dsn({}) == MailDsn()


@pytest.mark.parametrize(
    "params",
    [{"RET": "BODY"}, {"RET": None}, {"ENVID": None}, {"ENVID": "a" * 101}, {"ENVID": "a+x"}],
)
def test_bad_mail_parameters_get_501(params: dict[str, str | None]) -> None:
    reply = mail_dsn(params)
    assert isinstance(reply, Reply)
    assert reply.code == 501


def test_rcpt_parameters_decoded() -> None:
    assert rcpt_dsn({"NOTIFY": "success,Delay"}) == RcptDsn(("SUCCESS", "DELAY"), None)
    assert rcpt_dsn({"ORCPT": "rfc822;b+40c.example"}) == RcptDsn(None, "rfc822;b@c.example")
    assert rcpt_dsn({"NOTIFY": "NEVER"}).wants("FAILURE") is False  # type: ignore[union-attr]
    default = RcptDsn()
    assert default.wants("FAILURE")
    assert default.wants("DELAY")
    assert not default.wants("SUCCESS")


@pytest.mark.parametrize(
    "params",
    [
        {"NOTIFY": "NEVER,FAILURE"},
        {"NOTIFY": "SOMETIMES"},
        {"NOTIFY": "FAILURE,FAILURE"},
        {"NOTIFY": None},
        {"ORCPT": "b@c.example"},  # no addr-type
        {"ORCPT": "rfc822;"},
        {"ORCPT": "rfc822;b+4"},
        {"ORCPT": "rfc822;" + "a" * 500},
    ],
)
def test_bad_rcpt_parameters_get_501(params: dict[str, str | None]) -> None:
    reply = rcpt_dsn(params)
    assert isinstance(reply, Reply)
    assert reply.code == 501


def test_parameters_written_back_for_an_upstream_round_trip() -> None:
    mail = MailDsn("FULL", "id with space+plus")
    rcpt = RcptDsn(("SUCCESS", "FAILURE"), "rfc822;ü@example.org")
    assert mail_params(mail) == {"RET": "FULL", "ENVID": "id+20with+20space+2Bplus"}
    assert rcpt_params(rcpt) == {
        "NOTIFY": "SUCCESS,FAILURE",
        "ORCPT": "rfc822;+C3+BC@example.org",
    }
    assert mail_dsn(mail_params(mail)) == mail
    assert rcpt_dsn(rcpt_params(rcpt)) == rcpt


def test_command_lines_carry_the_parameters_through_the_parser() -> None:
    mail = parse_command(b"MAIL FROM:<a@b.example> RET=FULL ENVID=env+2B1", Limits())
    assert isinstance(mail, Mail)
    assert mail_dsn(mail.params) == MailDsn("FULL", "env+1")
    rcpt = parse_command(b"RCPT TO:<c@d.example> NOTIFY=NEVER ORCPT=rfc822;c+40d.example", Limits())
    assert isinstance(rcpt, Rcpt)
    assert rcpt_dsn(rcpt.params) == RcptDsn(("NEVER",), "rfc822;c@d.example")
    bad = parse_command(b"RCPT TO:<c@d.example> NOTIFY=NEVER,SUCCESS", Limits())
    assert isinstance(bad, CommandError)
    assert bad.reply.code == 501
    assert "NEVER alone" in bad.reply.text


def test_client_side_commands_serialise_the_parameters() -> None:
    mail = Mail("a@b.example", size=10, params=mail_params(MailDsn("HDRS", "x=y")))
    assert mail.serialise() == b"MAIL FROM:<a@b.example> SIZE=10 RET=HDRS ENVID=x+3Dy\r\n"
    rcpt = Rcpt("c@d.example", rcpt_params(RcptDsn(("NEVER",), "rfc822;c@d.example")))
    assert rcpt.serialise() == b"RCPT TO:<c@d.example> NOTIFY=NEVER ORCPT=rfc822;c@d.example\r\n"
