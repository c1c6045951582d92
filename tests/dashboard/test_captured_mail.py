"""A captured message's views and the frame's HTML, from plain bytes (no daemon, no browser);
and the inbox's search words."""

from __future__ import annotations

import email.message
import email.policy

from dispatch.dashboard.captured_mail import frame_document, parse, view_of
from dispatch.dashboard.captured_search import Query, Summary

PNG = b"\x89PNG\r\n\x1a\n fake"


def message(html: str, *, subject: str = "Hello") -> email.message.EmailMessage:
    built = email.message.EmailMessage()
    built["From"] = "Alice <alice@example.com>"
    built["To"] = "bob@example.org"
    built["Subject"] = subject
    built.set_content("text part\n")
    built.add_alternative(html, subtype="html")
    return parse(built.as_bytes(policy=email.policy.SMTP))


def test_tags_a_policy_does_not_govern_are_cut_and_our_base_added() -> None:
    html = (
        '<!DOCTYPE html><html><head><meta charset="utf-8">'
        '<meta http-equiv="refresh" content="0;url=http://evil.example/">'
        '<link rel="preconnect" href="http://evil.example"><base href="http://evil.example/">'
        '</head><body><iframe src="http://evil.example/f"></iframe><FRAME src="x">'
        "<p>kept</p><script>alert(1)</script></body></html>"
    )
    document = frame_document(message(html))
    assert document is not None
    assert "evil.example" not in document
    assert '<meta charset="utf-8">' in document  # only http-equiv metas go
    assert document.startswith('<!DOCTYPE html><html><head><base target="_blank">')
    assert "<p>kept</p>" in document
    assert "<script>alert(1)</script>" in document  # stopped by the sandbox and the policy


def test_without_a_head_the_base_goes_after_the_doctype_or_first() -> None:
    assert frame_document(message("<p>x</p>")) == '<base target="_blank"><p>x</p>\n'
    document = frame_document(message("<!doctype html><p>x</p>"))
    assert document == '<!doctype html><base target="_blank"><p>x</p>\n'


def test_cid_images_are_inlined_and_unknown_ones_left() -> None:
    built = message('<img src="cid:logo@x"><img src="CID:missing@x">')
    html_part = built.get_body(("html",))
    assert isinstance(html_part, email.message.EmailMessage)
    html_part.add_related(PNG, maintype="image", subtype="png", cid="<logo@x>")
    reparsed = parse(built.as_bytes(policy=email.policy.SMTP))
    document = frame_document(reparsed)
    assert document is not None
    assert '<img src="data:image/png;base64,iVBORw0KGgogZmFrZQ==">' in document
    assert 'src="CID:missing@x"' in document  # the frame's policy refuses cid: itself
    (attachment,) = view_of(reparsed).attachments
    assert (attachment.content_id, attachment.is_image, attachment.inline) == ("logo@x", True, True)


def test_the_view_decodes_headers_and_lists_links_and_parts() -> None:
    built = message(
        '<a href="https://example.com/a">a</a><a href="https://example.com/a">again</a>'
        '<area href="mailto:x@example.com">',
        subject="=?utf-8?q?Gr=C3=BC=C3=9Fe?=",
    )
    built.add_attachment(b"%PDF", maintype="application", subtype="pdf", filename="r.pdf")
    built.add_attachment(b"<svg/>", maintype="image", subtype="svg+xml", filename="x.svg")
    view = view_of(parse(built.as_bytes(policy=email.policy.SMTP)))
    assert view.subject == "Grüße"
    assert view.sender == "Alice <alice@example.com>"
    assert view.text == "text part\n"
    assert view.links == ("https://example.com/a", "mailto:x@example.com")
    pdf, svg = view.attachments
    assert (pdf.filename, pdf.content_type, pdf.inline, pdf.is_image) == (
        "r.pdf",
        "application/pdf",
        False,
        False,
    )
    assert svg.is_image is False  # an SVG is a document that runs script: never inline


def test_a_message_without_html_has_no_frame() -> None:
    plain = email.message.EmailMessage()
    plain["Subject"] = "plain"
    plain.set_content("only text")
    parsed = parse(plain.as_bytes(policy=email.policy.SMTP))
    assert frame_document(parsed) is None
    assert view_of(parsed).html is None


def summary(**fields: object) -> Summary:
    base: dict[str, object] = {
        "id": "spl_01HF7YAT007KD0W8Y666TG4027",
        "captured_at": 0.0,
        "mail_from": "shop@example.com",
        "recipients": ("bob@example.org",),
        "tags": ("welcome",),
        "size": 10,
        "subject": "Password reset for Bob",
        "from_header": "Shop <shop@example.com>",
        "to_header": "Bob <bob@example.org>",
        "mixed": False,
    }
    base.update(fields)
    return Summary(**base)  # type: ignore[arg-type]


def test_search_words_and_fields() -> None:
    one = summary()
    assert Query.parse("").matches(one)
    assert Query.parse("bob").matches(one)
    assert Query.parse('subject:"password RESET"').matches(one)
    assert not Query.parse("subject:welcome").matches(one)
    assert Query.parse("tag:welcome to:@example.org").matches(one)
    assert not Query.parse("from:bob").matches(one)
    assert Query.parse("id:TG4027").matches(one)
    assert Query.parse('unbalanced "quote').words == ((None, "unbalanced"), (None, '"quote'))
    assert Query.parse("nofield:x").words == ((None, "nofield:x"),)
