"""The Local inbox over HTTP (httpx, signed in as the admin), with mail sent by real SMTP.

The browser tests (the HTML frame's script blocked, live updates, release to a sink) are in
``test_inbox_browser.py``.
"""

from __future__ import annotations

import email.message
import email.policy
import re
import smtplib
from pathlib import Path

from tests.dashboard.support import AdminClient, DashboardDaemon
from tests.support.waiting import wait_until

PNG: bytes = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f"
    b"\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\xcf\xc0\xf0\x1f\x00\x05\x00\x01\xff\x89\x99=\x1d"
    b"\x00\x00\x00\x00IEND\xaeB`\x82"
)
"""A 1x1 PNG."""


def rich_message(subject: str, *, html: str, sender: str = "alice@example.com") -> bytes:
    """A multipart message: text, HTML with a cid: image, a PNG and a PDF attachment."""
    message = email.message.EmailMessage()
    message["From"] = f"Alice <{sender}>"
    message["To"] = "bob@example.org"
    message["Subject"] = subject
    message.set_content("The plain text part.\n")
    message.add_alternative(html, subtype="html")
    html_part = message.get_body(("html",))
    assert isinstance(html_part, email.message.EmailMessage)
    html_part.add_related(PNG, maintype="image", subtype="png", cid="<logo@example.com>")
    message.add_attachment(PNG, maintype="image", subtype="png", filename="chart.png")
    message.add_attachment(b"%PDF-1.4 fake", maintype="application", subtype="pdf",
                           filename="report.pdf")  # fmt: skip
    return message.as_bytes(policy=email.policy.SMTP)


def send(dashboard: DashboardDaemon, raw: bytes, to: str = "bob@example.org") -> None:
    with smtplib.SMTP("127.0.0.1", dashboard.ports.smtp, timeout=30) as smtp:
        smtp.sendmail("alice@example.com", [to], raw)


def captured_dir(dashboard: DashboardDaemon) -> Path:
    return Path(dashboard.config["spool"]["directory"]) / "captured"


def captured_ids(dashboard: DashboardDaemon) -> list[str]:
    return sorted(p.stem for p in captured_dir(dashboard).glob("*.json"))


def wait_for_captured(dashboard: DashboardDaemon, count: int) -> list[str]:
    wait_until(lambda: len(captured_ids(dashboard)) >= count, what=f"{count} captured message(s)")
    return captured_ids(dashboard)


def test_list_search_and_message_views(
    dashboard: DashboardDaemon, admin_client: AdminClient
) -> None:
    html = '<p>Hello <b>Bob</b></p><img src="cid:logo@example.com" alt="logo">'
    send(dashboard, rich_message("Quarterly report", html=html))
    plain = email.message.EmailMessage()
    plain["From"], plain["To"], plain["Subject"] = "carol@example.net", "dan@example.org", "Lunch"
    plain.set_content("Noon?")
    send(dashboard, plain.as_bytes(policy=email.policy.SMTP), to="dan@example.org")
    first, second = wait_for_captured(dashboard, 2)
    http = admin_client.http

    listing = http.get("/inbox")
    assert listing.status_code == 200
    assert "Quarterly report" in listing.text
    assert "Lunch" in listing.text
    found = http.get("/inbox", params={"q": "subject:quarterly"})
    assert "Quarterly report" in found.text
    assert "Lunch" not in found.text
    by_recipient = http.get("/inbox", params={"q": "to:dan@"})
    assert "Lunch" in by_recipient.text
    assert "Quarterly" not in by_recipient.text

    page = http.get(f"/inbox/{first}")
    assert page.status_code == 200
    assert f'src="/inbox/{first}/frame"' in page.text
    assert 'sandbox="allow-popups allow-popups-to-escape-sandbox"' in page.text
    assert "chart.png" in page.text
    assert "report.pdf" in page.text
    assert "The plain text part." in http.get(f"/inbox/{first}", params={"view": "text"}).text
    source = http.get(f"/inbox/{first}", params={"view": "source"}).text
    assert "&lt;b&gt;Bob&lt;/b&gt;" in source
    headers = http.get(f"/inbox/{first}", params={"view": "headers"}).text
    assert "Received" in headers
    assert "Alice &lt;alice@example.com&gt;" in headers
    assert "Content-Type: multipart/mixed" in http.get(
        f"/inbox/{first}", params={"view": "raw"}
    ).text.replace("&#34;", '"')
    raw = http.get(f"/inbox/{first}/raw", params={"download": "1"})
    assert raw.headers["content-type"] == "message/rfc822"
    assert raw.content.endswith(b"\r\n")
    assert b"Subject: Quarterly report" in raw.content

    frame = http.get(f"/inbox/{first}/frame")
    policy = frame.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "img-src data:;" in policy
    assert "sandbox" in policy
    assert "script-src" not in policy
    assert frame.headers["x-frame-options"] == "SAMEORIGIN"
    assert "data:image/png;base64," in frame.text  # the cid: image, inlined
    remote = http.get(f"/inbox/{first}/frame", params={"remote": "1"})
    assert "img-src data: https:;" in remote.headers["content-security-policy"]

    thumbs = re.findall(rf'<img class="thumb" src="(/inbox/{first}/part/\d+)"', page.text)
    assert len(thumbs) == 2  # the inline logo and the attached chart; never the PDF
    image = http.get(thumbs[0])
    assert image.headers["content-type"] == "image/png"
    assert image.content == PNG
    assert "sandbox" in image.headers["content-security-policy"]
    last_download = rf'href="(/inbox/{first}/part/\d+)\?download=1">Download</a>\s*</li>\s*</ul>'
    pdf_link = re.search(last_download, page.text)
    assert pdf_link is not None
    pdf = http.get(pdf_link.group(1))
    assert pdf.headers["content-type"] == "application/octet-stream"
    assert pdf.headers["content-disposition"].startswith("attachment;")
    assert http.get(f"/inbox/{second}").status_code == 200
    assert http.get("/inbox/spl_00000000000000000000000000").status_code == 404


def test_rows_answer_204_until_new_mail_arrives(
    dashboard: DashboardDaemon, admin_client: AdminClient
) -> None:
    http = admin_client.http
    first = http.get("/inbox/rows")
    assert first.status_code == 200
    version = first.headers["x-live-version"]
    assert http.get("/inbox/rows", params={"version": version}).status_code == 204
    send(dashboard, rich_message("Arrives later", html="<p>x</p>"))
    wait_for_captured(dashboard, 1)
    later = http.get("/inbox/rows", params={"version": version})
    assert later.status_code == 200
    assert "Arrives later" in later.text


def test_delete_one_and_all_are_audited(
    dashboard: DashboardDaemon, admin_client: AdminClient
) -> None:
    for n in range(3):
        send(dashboard, rich_message(f"Number {n}", html="<p>x</p>"))
    first, *_ = wait_for_captured(dashboard, 3)
    answer = admin_client.post_form(f"/inbox/{first}/delete")
    assert answer.status_code == 303
    assert answer.headers["location"].startswith("/inbox?notice=")
    assert f"Deleted {first}" in admin_client.http.get(answer.headers["location"]).text
    assert first not in captured_ids(dashboard)
    assert len(captured_ids(dashboard)) == 2
    assert not (captured_dir(dashboard) / f"{first}.eml").exists()
    everything = admin_client.post_form("/inbox/delete-all")
    assert everything.status_code == 303
    assert captured_ids(dashboard) == []
    notice = admin_client.http.get(everything.headers["location"]).text
    assert "Deleted 2 captured messages" in notice

    def audited() -> bool:
        text = admin_client.http.get("/audit", params={"category": "System"}).text
        return f"Local inbox: {first} deleted" in text and "all 2 messages deleted" in text

    wait_until(audited, what="the deletions in the audit log")


def test_actions_without_the_csrf_token_are_forbidden(
    dashboard: DashboardDaemon, admin_client: AdminClient
) -> None:
    send(dashboard, rich_message("Keep me", html="<p>x</p>"))
    (message_id,) = wait_for_captured(dashboard, 1)
    http = admin_client.http
    for path, data in (
        (f"/inbox/{message_id}/delete", {}),
        ("/inbox/delete-all", {}),
        (f"/inbox/{message_id}/release", {"relay": "local", "to": "x@example.org"}),
    ):
        assert http.post(path, data=data).status_code == 403, path
    assert captured_ids(dashboard) == [message_id]
