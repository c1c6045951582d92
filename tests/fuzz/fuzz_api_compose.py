"""Fuzz target: the API's request parsing, validation and MIME building (`dispatch.api.compose`).

The first byte chooses the body type. ``J``: the rest is a JSON body, parsed as the API does
and handed to `ComposeRequest.from_json`. Otherwise the rest is a readable form: one field
per line, ``name=value``, or ``@field;filename;content-type=data`` for an uploaded file,
handed to `ComposeRequest.from_form`. Then `compose`. Oracles: the only exception is the
documented `ValidationError` (a body that is not JSON is the web layer's 400, before
compose); a composed message is 7-bit ASCII with CRLF line ends, has at most 100 recipients,
and every recipient is in the envelope once.
"""

from __future__ import annotations

import json

import atheris  # type: ignore[import-untyped]

from tests.support.sources import import_sources

import_sources()  # the SMTP core as Python, not its compiled build
with atheris.instrument_imports(include=["dispatch"]):
    from dispatch.api.compose import compose
    from dispatch.api.problems import ValidationError
    from dispatch.api.request import ComposeRequest, UploadedFile
    from dispatch.api.validation import MAX_RECIPIENTS

NOW = 1_795_248_000.0


def form(text: str) -> ComposeRequest:
    fields: list[tuple[str, str]] = []
    files: list[UploadedFile] = []
    for line in text.split("\n"):
        if line.startswith("@"):
            head, _, data = line[1:].partition("=")
            field, _, rest = head.partition(";")
            filename, _, content_type = rest.partition(";")
            files.append(
                UploadedFile(field, filename, content_type, data.encode(errors="surrogateescape"))
            )
        else:
            name, _, value = line.partition("=")
            fields.append((name, value.replace("\\n", "\n")))
    return ComposeRequest.from_form(fields, files)


def TestOneInput(data: bytes) -> None:
    if data[:1] == b"J":
        try:
            document = json.loads(data[1:])
        except (ValueError, RecursionError):
            return  # the web layer answers 400 invalid JSON
        request = ComposeRequest.from_json(document)
    else:
        request = form(data[1:].decode("utf-8", "surrogateescape"))
    try:
        composed = compose(request, message_id_domain="dispatch.invalid", now=NOW)
    except ValidationError as exc:
        if not exc.detail:
            raise AssertionError("a ValidationError without a problem") from exc
        return
    message = composed.message
    assert message.isascii(), "not 7-bit"
    assert b"\n" not in message.replace(b"\r\n", b""), "a bare LF"
    assert b"\r" not in message.replace(b"\r\n", b""), "a bare CR"
    assert 1 <= len(composed.recipients) <= MAX_RECIPIENTS
    lowered = [r.lower() for r in composed.recipients]
    assert len(set(lowered)) == len(lowered), "a recipient twice"


if __name__ == "__main__":
    from tests.fuzz._runner import fuzz

    fuzz(TestOneInput)
