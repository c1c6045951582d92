"""API request fields → envelope + MIME message: plain values in, bytes parsed back out."""

from __future__ import annotations

import email
import email.policy
import re
from email.headerregistry import Address
from email.message import EmailMessage, Message
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatch.api.compose import Composed, compose
from dispatch.api.problems import Problem, ValidationError
from dispatch.api.request import ComposeRequest, UploadedFile
from dispatch.api.validation import MAX_RECIPIENTS

NOW = 1_750_000_000.0  # 2025-06-15 15:06:40 UTC
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BARE_LF_OR_CR = re.compile(rb"\r(?!\n)|(?<!\r)\n")


def build(request: ComposeRequest) -> Composed:
    return compose(request, message_id_domain="relay.example.test", now=NOW)


def compose_or_problems(request: ComposeRequest) -> Composed | tuple[Problem, ...]:
    try:
        return build(request)
    except ValidationError as error:
        return error.problems


def parse(composed: Composed) -> EmailMessage:
    message = email.message_from_bytes(composed.message, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def problems(request: ComposeRequest) -> list[dict[str, str]]:
    with pytest.raises(ValidationError) as caught:
        build(request)
    return caught.value.detail


def fields_of(request: ComposeRequest) -> list[str]:
    return [p["field"] for p in problems(request)]


def header_block(composed: Composed) -> bytes:
    return composed.message.split(b"\r\n\r\n", 1)[0]


def text_of(part: Message) -> str:
    assert isinstance(part, EmailMessage)
    content = part.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


def minimal(**fields: Any) -> ComposeRequest:
    document: dict[str, Any] = {"from": "ann@a.test", "to": "bob@b.test", "text": "hi"}
    document.update(fields)
    return ComposeRequest.from_json({k: v for k, v in document.items() if v is not None})


# --- what comes out ------------------------------------------------------------------------


def test_json_request_carries_everything() -> None:
    request = ComposeRequest.from_json(
        {
            "from": "Jörg Müller <jorg@sender.test>",
            "to": ["a@one.test", "Bea <b@two.test>"],
            "cc": "c@three.test, d@three.test",
            "bcc": ["hidden@secret.test"],
            "subject": "Grüße aus Köln — ✓",
            "text": "Hallo Welt,\nschöne Grüße.\n",
            "html": "<p>Hallo <b>Welt</b></p>",
            "headers": {"X-Campaign": "spring", "Reply-To": "Support <help@sender.test>"},
            "tags": ["welcome", "de"],
        }
    )
    composed = build(request)
    assert composed.mail_from == "jorg@sender.test"
    assert composed.recipients == (
        "a@one.test",
        "b@two.test",
        "c@three.test",
        "d@three.test",
        "hidden@secret.test",
    )
    assert composed.tags == ("welcome", "de")
    assert composed.subject == "Grüße aus Köln — ✓"
    assert composed.size == len(composed.message)
    assert composed.message.isascii()
    assert b"=?utf-8?" in header_block(composed)  # RFC 2047, not raw UTF-8

    message = parse(composed)
    assert message["Subject"] == "Grüße aus Köln — ✓"
    assert message["From"].addresses[0].display_name == "Jörg Müller"
    assert [a.addr_spec for a in message["To"].addresses] == ["a@one.test", "b@two.test"]
    assert [a.addr_spec for a in message["Cc"].addresses] == ["c@three.test", "d@three.test"]
    assert message["X-Campaign"] == "spring"
    assert message["Reply-To"].addresses[0].addr_spec == "help@sender.test"
    assert message["Message-ID"] == composed.message_id
    assert composed.message_id.endswith("@relay.example.test>")
    assert message["Date"].datetime.timestamp() == NOW
    assert message["MIME-Version"] == "1.0"
    assert message.get_content_type() == "multipart/alternative"
    plain, html = message.get_body(("plain",)), message.get_body(("html",))
    assert plain is not None
    assert html is not None
    assert text_of(plain) == "Hallo Welt,\nschöne Grüße.\n"
    assert text_of(html) == "<p>Hallo <b>Welt</b></p>\n"
    # Tags are envelope metadata, Bcc is envelope only.
    assert b"welcome" not in composed.message
    assert b"hidden" not in composed.message
    assert message["Bcc"] is None


def test_form_request_with_two_attachments() -> None:
    pdf = bytes(range(256)) * 3
    csv = "name,city\nZoë,Zürich\n".encode()
    request = ComposeRequest.from_form(
        [
            ("from", "ann@a.test"),
            ("to", "one@x.test, Two <two@x.test>"),
            ("to", '"Doe, John" <john@y.test>'),
            ("cc", "cee@z.test"),
            ("bcc", "b1@hidden.test"),
            ("bcc", "b2@hidden.test, b3@hidden.test"),
            ("subject", "Report ✓"),
            ("text", "See attached."),
            ("html", "<p>See attached.</p>"),
            ("h:X-Mailer-Job", "42"),
            ("h:In-Reply-To", "<prev@a.test>"),
            ("o:tag", "report"),
            ("o:tag", "monthly"),
        ],
        [
            UploadedFile("attachment", "Jahresbericht ü.pdf", "application/octet-stream", pdf),
            UploadedFile("attachment", "data.csv", "", csv),
        ],
    )
    composed = build(request)
    assert composed.recipients == (
        "one@x.test",
        "two@x.test",
        "john@y.test",
        "cee@z.test",
        "b1@hidden.test",
        "b2@hidden.test",
        "b3@hidden.test",
    )
    assert composed.tags == ("report", "monthly")
    assert b"hidden.test" not in composed.message
    assert b"filename*=utf-8''Jahresbericht%20%C3%BC.pdf" in composed.message  # RFC 2231

    message = parse(composed)
    assert message.get_content_type() == "multipart/mixed"
    body, *attachments = message.iter_parts()
    assert body.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in body.iter_parts()] == ["text/plain", "text/html"]
    assert [a.addr_spec for a in message["To"].addresses] == [
        "one@x.test",
        "two@x.test",
        "john@y.test",
    ]
    assert message["To"].addresses[2].display_name == "Doe, John"
    assert message["X-Mailer-Job"] == "42"
    assert message["In-Reply-To"] == "<prev@a.test>"
    assert [(a.get_filename(), a.get_content_type()) for a in attachments] == [
        ("Jahresbericht ü.pdf", "application/pdf"),  # guessed: octet-stream says nothing
        ("data.csv", "text/csv"),  # guessed: no content type sent
    ]
    assert [a.get_payload(decode=True) for a in attachments] == [pdf, csv]
    assert all(a.get_content_disposition() == "attachment" for a in attachments)


def test_recipients_are_deduplicated_case_insensitively_keeping_the_first_spelling() -> None:
    request = ComposeRequest.from_form(
        [
            ("from", "ann@a.test"),
            ("to", "Bob@B.test, carl@c.test"),
            ("cc", "bob@b.test"),
            ("bcc", "CARL@C.TEST, dora@d.test"),
            ("text", "x"),
        ],
        [],
    )
    composed = build(request)
    assert composed.recipients == ("Bob@B.test", "carl@c.test", "dora@d.test")
    assert parse(composed)["Cc"].addresses[0].addr_spec == "bob@b.test"  # headers keep all


def test_bcc_only_message_has_no_recipient_headers() -> None:
    composed = build(minimal(to=None, bcc=["secret@s.test"]))
    assert composed.recipients == ("secret@s.test",)
    headers = header_block(composed).lower()
    assert b"secret" not in headers
    assert b"\r\nto:" not in headers
    assert b"bcc" not in headers


@pytest.mark.parametrize(
    ("fields", "files", "content_type"),
    [
        ({"text": "plain"}, [], "text/plain"),
        ({"html": "<b>x</b>"}, [], "text/html"),
        ({"text": "a", "html": "<b>a</b>"}, [], "multipart/alternative"),
        ({}, [UploadedFile("attachment", "a.bin", "", b"\x00")], "multipart/mixed"),
        ({"text": "a"}, [UploadedFile("attachment", "a.bin", "", b"\x00")], "multipart/mixed"),
    ],
)
def test_structure(fields: dict[str, str], files: list[UploadedFile], content_type: str) -> None:
    form = [("from", "a@a.test"), ("to", "b@b.test"), *fields.items()]
    message = parse(build(ComposeRequest.from_form(form, files)))
    assert message.get_content_type() == content_type
    assert message["MIME-Version"] == "1.0"
    assert all(part["MIME-Version"] is None for part in message.walk() if part is not message)


def test_inline_files_join_the_html_in_multipart_related() -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(100)
    request = ComposeRequest.from_form(
        [
            ("from", "a@a.test"),
            ("to", "b@b.test"),
            ("text", "logo"),
            ("html", '<img src="cid:logo.png">'),
        ],
        [
            UploadedFile("attachment", "terms.pdf", "application/pdf", b"%PDF"),
            UploadedFile("inline", "logo.png", "image/png", png),
        ],
    )
    message = parse(build(request))
    body, terms = message.iter_parts()
    _plain, related = body.iter_parts()
    assert related.get_content_type() == "multipart/related"
    html, logo = related.iter_parts()
    assert html.get_content_type() == "text/html"
    assert logo["Content-ID"] == "<logo.png>"
    assert logo.get_content_disposition() == "inline"
    assert logo.get_payload(decode=True) == png
    assert terms.get_filename() == "terms.pdf"


@pytest.mark.parametrize(
    ("filename", "sent", "expected"),
    [
        ("photo.PNG", "application/octet-stream", "image/png"),
        ("notes", "", "application/octet-stream"),
        ("archive.tar.gz", "", "application/octet-stream"),
        ("fwd.eml", "message/rfc822", "application/octet-stream"),  # never base64 message/*
        ("x.bin", "text/plain; charset=utf-8", "text/plain"),
        ("x.pdf", "not a type", "application/pdf"),
    ],
)
def test_attachment_content_types(filename: str, sent: str, expected: str) -> None:
    upload = UploadedFile("attachment", filename, sent, b"data")
    request = ComposeRequest.from_form([("from", "a@a.test"), ("to", "b@b.test")], [upload])
    (attachment,) = parse(build(request)).iter_attachments()
    assert attachment.get_content_type() == expected
    assert attachment.get_payload(decode=True) == b"data"


def test_given_message_id_and_date_are_used() -> None:
    composed = build(
        minimal(headers={"Message-ID": "<mine@app.test>", "Date": "Tue, 1 Jul 2025 10:00:00 +0200"})
    )
    message = parse(composed)
    assert composed.message_id == "<mine@app.test>"
    assert message["Message-ID"] == "<mine@app.test>"
    assert message["Date"].datetime.isoformat() == "2025-07-01T10:00:00+02:00"
    assert header_block(composed).count(b"Message-ID:") == 1


def test_long_ascii_header_values_are_folded_not_encoded() -> None:
    url = "<https://example.test/unsubscribe/" + "a1b2c3d4" * 20 + ">"
    refs = " ".join(f"<msg{i}.{'x' * 30}@app.test>" for i in range(8))
    composed = build(
        minimal(headers={"List-Unsubscribe": f"{url}, <mailto:u@a.test>", "References": refs})
    )
    assert b"=?" not in header_block(composed)
    assert all(len(line) <= 998 for line in composed.message.split(b"\r\n"))
    message = parse(composed)
    assert message["List-Unsubscribe"] == f"{url}, <mailto:u@a.test>"
    assert message["References"] == refs


def test_non_ascii_custom_header_is_encoded() -> None:
    composed = build(minimal(headers={"X-Note": "naïve café"}))
    assert composed.message.isascii()
    assert parse(composed)["X-Note"] == "naïve café"


def test_empty_and_repeated_tags() -> None:
    composed = build(minimal(tags=["a", "", "b", "a"]))
    assert composed.tags == ("a", "b")


def test_exactly_max_recipients_is_fine_and_duplicates_do_not_count() -> None:
    addresses = [f"r{i}@x.test" for i in range(MAX_RECIPIENTS)]
    composed = build(minimal(to=addresses, cc=[a.upper() for a in addresses]))
    assert len(composed.recipients) == MAX_RECIPIENTS


def test_invalid_message_id_domain_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="message_id_domain"):
        compose(minimal(), message_id_domain="not a domain", now=NOW)


# --- what is refused -----------------------------------------------------------------------


def test_every_problem_is_listed_at_once() -> None:
    request = ComposeRequest.from_json(
        {
            "from": "ann@",
            "to": ["ok@b.test", "not-an-address"],
            "text": "hi",
            "headers": {"Bcc": "spy@evil.test"},
            "tags": ["x" * 200],
        }
    )
    detail = problems(request)
    assert [p["field"] for p in detail] == ["from", "to[1]", "headers.Bcc", "tags[0]"]
    assert all(set(p) == {"field", "problem"} and p["problem"] for p in detail)
    assert "no domain" in detail[0]["problem"]
    assert "'not-an-address'" in detail[1]["problem"]
    assert "bcc" in detail[2]["problem"]
    assert "128" in detail[3]["problem"]


def test_validation_error_shape() -> None:
    with pytest.raises(ValidationError) as caught:
        build(ComposeRequest.from_json({}))
    error = caught.value
    assert error.detail == [p.as_dict() for p in error.problems]
    assert [p["field"] for p in error.detail] == ["from", "to", "text"]
    assert str(error).startswith("validation failed: from: required")


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (minimal(subject="hi\r\nBcc: evil@x.test"), "subject"),
        (minimal(subject="hi\nBcc: evil@x.test"), "subject"),
        (minimal(subject="hi\u2028there"), "subject"),
        (minimal(to=["ok@b.test", "bob@b.test\r\nBcc: evil@x.test"]), "to[1]"),
        (minimal(to="Bob\r\n <bob@b.test>"), "to[0]"),
        (minimal(**{"from": "ann@a.test\nBcc: evil@x.test"}), "from"),
        (minimal(headers={"X-Foo": "bar\r\nBcc: evil@x.test"}), "headers.X-Foo"),
        (minimal(headers={"X-Foo: bar\r\nBcc": "evil@x.test"}), "headers.X-Foo: bar\r\nBcc"),
        (minimal(headers={"X-Nul": "a\x00b"}), "headers.X-Nul"),
        (minimal(headers={"Reply-To": "a@a.test\r\nBcc: evil@x.test"}), "headers.Reply-To"),
        (
            ComposeRequest.from_form(
                [("from", "a@a.test"), ("to", "b@b.test"), ("text", "x"), ("h:Bcc", "e@x.test")]
            ),
            "h:Bcc",
        ),
        (
            ComposeRequest.from_form(
                [("from", "a@a.test"), ("to", "b@b.test")],
                [UploadedFile("attachment", "a.txt\r\nBcc: evil@x.test", "", b"x")],
            ),
            "attachment[0]",
        ),
    ],
)
def test_header_injection_is_refused(request_: ComposeRequest, field: str) -> None:
    detail = problems(request_)
    assert [p["field"] for p in detail] == [field]


@pytest.mark.parametrize(
    "name",
    [
        "From",
        "to",
        "CC",
        "Bcc",
        "Subject",
        "MIME-Version",
        "Content-Type",
        "content-transfer-encoding",
        "Received",
        "Return-Path",
        "Resent-To",
        "DKIM-Signature",
        "Authentication-Results",
        "X Foo",
        "X:Foo",
        "Ünicode",
        "",
    ],
)
def test_refused_header_names(name: str) -> None:
    assert fields_of(minimal(headers={name: "v"})) == [f"headers.{name}"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("Message-ID", "no-brackets@a.test"),
        ("Message-ID", "<a@b.test> <c@d.test>"),
        ("In-Reply-To", "<missing-right-side>"),
        ("References", "<a@b.test> junk"),
        ("Date", "yesterday"),
        ("Date", "Sun, 31 Dec 1899 00:00:00 +0000"),
        ("Reply-To", ""),
        ("Reply-To", "not an address"),
        ("Sender", "a@a.test, b@b.test"),
    ],
)
def test_checked_headers_refuse_bad_values(name: str, value: str) -> None:
    assert fields_of(minimal(headers={name: value})) == [f"headers.{name}"]


def test_single_instance_headers_only_once() -> None:
    request = ComposeRequest.from_form(
        [
            ("from", "a@a.test"),
            ("to", "b@b.test"),
            ("text", "x"),
            ("h:Reply-To", "r@a.test"),
            ("h:reply-to", "s@a.test"),
            ("h:X-Multi", "1"),
            ("h:X-Multi", "2"),
        ]
    )
    assert fields_of(request) == ["h:reply-to"]


@pytest.mark.parametrize(
    ("address", "words"),
    [
        ("bob@", "no domain"),
        ("@b.test", "no local part"),
        ("bob", "no @domain"),
        ("Bob <bob@b.test", "not an address"),
        ("a@b.test b@c.test", "not an address"),
        ("group: a@b.test;", "not an address"),
        ("bob@-b.test", "SMTP"),
        ("bob@b..test", "not an address"),
        ("jörg@b.test", "ASCII"),
        ("bob@bücher.test", "xn--"),
        (":;a@b.test", "not an address"),  # the stdlib parser raises AttributeError
    ],
)
def test_bad_addresses(address: str, words: str) -> None:
    (problem,) = problems(minimal(to=["ok@b.test", address]))
    assert problem["field"] == "to[1]"
    assert words in problem["problem"]


def test_from_must_be_one_address() -> None:
    assert fields_of(minimal(**{"from": "a@a.test, b@b.test"})) == ["from"]


def test_too_many_recipients() -> None:
    many = ", ".join(f"r{i}@x.test" for i in range(MAX_RECIPIENTS + 1))
    (problem,) = problems(minimal(to=many))
    assert problem["field"] == "to"
    assert str(MAX_RECIPIENTS) in problem["problem"]


def test_hostile_address_lists_are_cut_short() -> None:
    assert fields_of(minimal(to=["a@b.test"] * 1_000_000)) == ["to"]
    assert fields_of(minimal(to=[",".join(["a@b.test"] * 1_000_000)])) == ["to[0]"]


def test_tag_limits() -> None:
    assert fields_of(minimal(tags=[f"t{i}" for i in range(101)])) == ["tags"]
    assert fields_of(minimal(tags=["ok", "bell\x07"])) == ["tags[1]"]
    request = ComposeRequest.from_form(
        [("from", "a@a.test"), ("to", "b@b.test"), ("text", "x"), ("o:tag", "y" * 129)]
    )
    assert fields_of(request) == ["o:tag[0]"]


def test_body_problems() -> None:
    assert fields_of(minimal(text="a\x00b")) == ["text"]
    assert fields_of(minimal(text=None, html="\ud800")) == ["html"]
    assert fields_of(minimal(text="", html="")) == ["text"]  # empty means absent


def test_json_shape_problems() -> None:
    assert fields_of(ComposeRequest.from_json(["not", "an", "object"])) == ["(body)"]
    request = ComposeRequest.from_json(
        {
            "from": 5,
            "to": {"a": 1},
            "cc": ["ok@c.test", 7],
            "subject": ["x"],
            "text": "t",
            "headers": ["X-Foo: bar"],
            "attachments": [{"filename": "a.txt"}],
            "tagz": ["typo"],
        }
    )
    assert fields_of(request) == [
        "from",
        "subject",
        "to",
        "cc[1]",
        "headers",
        "attachments",
        "tagz",
    ]


def test_form_shape_problems() -> None:
    request = ComposeRequest.from_form(
        [
            ("from", "a@a.test"),
            ("from", "b@b.test"),
            ("to", "c@c.test"),
            ("text", "x"),
            ("attachment", "pasted text"),
            ("o:deliverytime", "tomorrow"),
            ("v:custom", "1"),
        ],
        [UploadedFile("file", "a.txt", "", b"x")],
    )
    assert fields_of(request) == ["attachment", "o:deliverytime", "v:custom", "from", "file"]


@pytest.mark.parametrize(
    ("upload", "words"),
    [
        (UploadedFile("attachment", "", "", b"x"), "no file name"),
        (UploadedFile("attachment", "x" * 256, "", b"x"), "255"),
        (UploadedFile("inline", "my logo.png", "", b"x"), "Content-ID"),
    ],
)
def test_file_name_problems(upload: UploadedFile, words: str) -> None:
    request = ComposeRequest.from_form([("from", "a@a.test"), ("to", "b@b.test")], [upload])
    (problem,) = problems(request)
    assert problem["field"] == f"{upload.field}[0]"
    assert words in problem["problem"]


# --- properties ----------------------------------------------------------------------------

_label = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
_local = st.from_regex(r"[A-Za-z0-9]{1,8}(?:[._+-][A-Za-z0-9]{1,8}){0,2}", fullmatch=True)
_domain = st.lists(_label, min_size=1, max_size=3).map(lambda labels: ".".join([*labels, "test"]))
_header_text = st.text(st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp")), max_size=40)
_mailbox = st.builds(
    lambda name, local, domain: (
        str(Address(name, local, domain)) if name.strip() else f"{local}@{domain}"
    ),
    _header_text,
    _local,
    _domain,
)
_body = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=300)


def _fair_filename(name: str) -> bool:
    """Leave out names the stdlib cannot round-trip, through no fault of compose().

    ``get_filename()`` unquotes twice, so ``"<x>"`` reads back as ``x``; setting a parameter
    decodes RFC 2047 words in it, so ``=?utf-8?q?x?=`` is written as ``x``.
    """
    name = name.strip()
    return bool(name) and "=?" not in name and not (name.startswith("<") and name.endswith(">"))


_upload = st.builds(
    UploadedFile,
    field=st.just("attachment"),
    filename=st.text(
        st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1, max_size=30
    ).filter(_fair_filename),
    content_type=st.sampled_from(["", "application/octet-stream", "image/png", "text/plain"]),
    data=st.binary(max_size=300),
)


def _bare(mailbox: str) -> str:
    return mailbox[mailbox.rfind("<") + 1 : -1] if mailbox.endswith(">") else mailbox


def _expected_body(text: str) -> str:
    return "\n".join(line.decode() for line in text.encode().splitlines()) + "\n"


@PROPERTY
@given(
    sender=_mailbox,
    to=st.lists(_mailbox, max_size=4),
    cc=st.lists(_mailbox, max_size=3),
    bcc=st.lists(_mailbox, max_size=3),
    subject=_header_text,
    text=_body,
    html=st.one_of(st.none(), _body),
    uploads=st.lists(_upload, max_size=3),
    as_form=st.booleans(),
    joined=st.booleans(),
)
def test_valid_requests_always_compose(
    sender: str,
    to: list[str],
    cc: list[str],
    bcc: list[str],
    subject: str,
    text: str,
    html: str | None,
    uploads: list[UploadedFile],
    as_form: bool,
    joined: bool,
) -> None:
    if not (to or cc or bcc):
        to = ["fallback@x.test"]
    if not (text or html or uploads):
        text = "fallback"

    def values(mailboxes: list[str]) -> list[str]:
        return [", ".join(mailboxes)] if joined and mailboxes else mailboxes

    if as_form:
        form = [("from", sender), ("subject", subject), ("text", text)]
        form += [
            (name, v)
            for name, boxes in (("to", to), ("cc", cc), ("bcc", bcc))
            for v in values(boxes)
        ]
        form += [("html", html)] if html is not None else []
        request = ComposeRequest.from_form(form, uploads)
    else:
        uploads = []
        if not (text or html):
            text = "fallback"
        request = ComposeRequest.from_json(
            {
                "from": sender,
                "to": values(to),
                "cc": values(cc),
                "bcc": values(bcc),
                "subject": subject,
                "text": text,
                "html": html,
            }
        )

    composed = build(request)

    expected: dict[str, str] = {}
    for mailbox in [*to, *cc, *bcc]:
        expected.setdefault(_bare(mailbox).lower(), _bare(mailbox))
    assert composed.recipients == tuple(expected.values())
    assert composed.mail_from == _bare(sender)
    assert composed.message.isascii()
    assert BARE_LF_OR_CR.search(composed.message) is None
    assert composed.message.endswith(b"\r\n")
    assert all(len(line) <= 998 for line in composed.message.split(b"\r\n"))

    message = parse(composed)
    assert not message.defects
    headers = header_block(composed).decode().lower()
    header_rcpts = {
        a.addr_spec.lower() for h in ("To", "Cc") if message[h] for a in message[h].addresses
    }
    assert header_rcpts == {_bare(m).lower() for m in [*to, *cc]}
    assert message["Bcc"] is None
    assert "\nbcc:" not in headers
    assert (message["Subject"] or "") == subject.strip() == composed.subject
    if text:
        plain = message.get_body(("plain",))
        assert plain is not None
        assert text_of(plain) == _expected_body(text)
    if html:
        rich = message.get_body(("html",))
        assert rich is not None
        assert text_of(rich) == _expected_body(html)
    attachments = list(message.iter_attachments())
    assert [(a.get_filename(), a.get_payload(decode=True)) for a in attachments] == [
        (u.filename.strip(), u.data) for u in uploads
    ]


_junk_text = st.text(
    st.one_of(
        st.characters(),
        st.sampled_from([*'\r\n\x00\x1c\u2028<>@,;:"\\()[]. \t=?', "\ud800", "ü"]),
    ),
    max_size=40,
)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | _junk_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_junk_text, inner, max_size=4),
    max_leaves=12,
)
_keys = st.sampled_from(
    ["from", "to", "cc", "bcc", "subject", "text", "html", "headers", "tags", "attachments"]
)


@PROPERTY
@given(document=st.one_of(_json, st.dictionaries(st.one_of(_keys, _junk_text), _json)))
def test_junk_json_only_ever_raises_validation_error(document: object) -> None:
    outcome = compose_or_problems(ComposeRequest.from_json(document))
    assert isinstance(outcome, Composed) or outcome


_form_names = st.one_of(
    st.sampled_from(
        [
            "from",
            "to",
            "cc",
            "bcc",
            "subject",
            "text",
            "html",
            "o:tag",
            "h:X-A",
            "h:Reply-To",
            "h:Message-ID",
            "h:Date",
            "h:References",
            "h:Bcc",
            "h:Content-Type",
            "attachment",
        ]
    ),
    _junk_text,
    _junk_text.map(lambda s: "h:" + s),
)
_junk_upload = st.builds(
    UploadedFile,
    field=st.sampled_from(["attachment", "inline", "other"]),
    filename=_junk_text,
    content_type=st.one_of(_junk_text, st.sampled_from(["image/png", "multipart/mixed"])),
    data=st.binary(max_size=50),
)


@PROPERTY
@given(
    fields=st.lists(st.tuples(_form_names, _junk_text), max_size=12),
    uploads=st.lists(_junk_upload, max_size=3),
    base=st.booleans(),
)
def test_junk_form_only_ever_raises_validation_error(
    fields: list[tuple[str, str]], uploads: list[UploadedFile], base: bool
) -> None:
    if base:  # often valid apart from the junk, so the junk reaches the builder
        fields = [("from", "a@a.test"), ("to", "b@b.test"), ("text", "x"), *fields]
    outcome = compose_or_problems(ComposeRequest.from_form(fields, uploads))
    if isinstance(outcome, Composed):
        assert outcome.message.isascii()
        assert BARE_LF_OR_CR.search(outcome.message) is None
        assert not parse(outcome).defects
    else:
        assert outcome
