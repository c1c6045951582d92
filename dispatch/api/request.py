"""The shape of a ``POST /api/v1/messages`` request: its fields, read from JSON or a form.

Pure: no I/O. The web layer (:mod:`dispatch.api.body`) decodes the JSON body or parses the
``multipart/form-data`` fields and hands them to :meth:`ComposeRequest.from_json` or
:meth:`ComposeRequest.from_form`. Both return a :class:`ComposeRequest` whatever they are
given: a field of the wrong type (a JSON number where a string belongs), an unknown field or
a repeated ``from`` is dropped and listed in the request's ``problems``, which
:func:`dispatch.api.validation.validate` reports together with its own.

In JSON, ``to``, ``cc``, ``bcc`` and ``tags`` may be a string or a list of strings,
``headers`` an object of strings; files come only in multipart requests. In forms, custom
headers are ``h:<Name>`` fields and tags ``o:tag`` fields (Mailgun's names). Unknown fields
are refused, Mailgun's other ``o:``/``v:`` options included, rather than silently ignored.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final, Literal

import attrs

from dispatch.api.problems import Problem, ProblemList, clip

__all__ = ["ComposeRequest", "FileField", "Origin", "UploadedFile"]

Origin = Literal["json", "form"]
FileField = Literal["attachment", "inline"]

_LISTS: Final = ("to", "cc", "bcc")
_JSON_FIELDS: Final = ("from", "to", "cc", "bcc", "subject", "text", "html", "headers", "tags")
_FORM_FIELDS: Final = "from, to, cc, bcc, subject, text, html, h:<Header>, o:tag"
_SINGLE: Final = ("from", "subject", "text", "html")
_FILE_FIELDS: Final = ("attachment", "inline")
_FILES_ONLY_IN_FORMS: Final = (
    "files are accepted only in multipart/form-data requests, as `attachment` or `inline` "
    "file fields; send the request as multipart/form-data"
)


@attrs.frozen
class UploadedFile:
    """A file from a multipart body, as the web layer parsed it.

    ``field`` is the form field name (``attachment`` or ``inline``; others are refused),
    ``content_type`` is the part's Content-Type or ``""``.
    """

    field: str
    filename: str
    content_type: str
    data: bytes


@attrs.frozen
class ComposeRequest:
    """The fields of one request, normalised but not yet validated.

    ``problems`` are what the constructors found wrong with the shape of the input, at most
    :data:`~dispatch.api.problems.MAX_PROBLEMS` of them, ``more_problems`` the count of the
    others (see the module docstring).
    """

    origin: Origin
    from_: str | None = None
    to: tuple[str, ...] = ()
    cc: tuple[str, ...] = ()
    bcc: tuple[str, ...] = ()
    subject: str | None = None
    text: str | None = None
    html: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    tags: tuple[str, ...] = ()
    files: tuple[UploadedFile, ...] = ()
    problems: tuple[Problem, ...] = ()
    more_problems: int = 0  # found beyond MAX_PROBLEMS, not described

    @classmethod
    def from_json(cls, document: object) -> ComposeRequest:
        """Read a decoded ``application/json`` body (whatever ``json.loads`` returned)."""
        if not isinstance(document, dict):
            return cls("json", problems=(Problem("(body)", "send a JSON object of fields"),))
        problems = ProblemList()
        strings: dict[str, str | None] = {}
        for name in _SINGLE:
            value = document.get(name)
            if value is None or isinstance(value, str):
                strings[name] = value
            else:
                problems.add(name, "must be a string")
        lists = {name: _json_strings(document.get(name), name, problems) for name in _LISTS}
        tags = _json_strings(document.get("tags"), "tags", problems)
        headers = _json_headers(document.get("headers"), problems)
        _refuse_unknown_json_fields(document, problems)
        return cls(
            "json",
            from_=strings.get("from"),
            to=lists["to"],
            cc=lists["cc"],
            bcc=lists["bcc"],
            subject=strings.get("subject"),
            text=strings.get("text"),
            html=strings.get("html"),
            headers=headers,
            tags=tags,
            problems=tuple(problems.kept),
            more_problems=problems.more,
        )

    @classmethod
    def from_form(
        cls, fields: Iterable[tuple[str, str]], files: Iterable[UploadedFile] = ()
    ) -> ComposeRequest:
        """Read ``multipart/form-data`` (or urlencoded) fields, in order, and uploaded files."""
        form = _FormFields()
        for name, value in fields:
            form.take(name, value)
        for name, count in form.repeats.items():
            form.problems.add(name, f"sent {count} times; send it once")
        kept: list[UploadedFile] = []
        for upload in files:
            if upload.field in _FILE_FIELDS:
                kept.append(upload)
            else:
                form.problems.add(
                    clip(upload.field), "files are accepted as `attachment` or `inline`"
                )
        return cls(
            "form",
            from_=form.single.get("from"),
            to=tuple(form.lists["to"]),
            cc=tuple(form.lists["cc"]),
            bcc=tuple(form.lists["bcc"]),
            subject=form.single.get("subject"),
            text=form.single.get("text"),
            html=form.single.get("html"),
            headers=tuple(form.headers),
            tags=tuple(form.tags),
            files=tuple(kept),
            problems=tuple(form.problems.kept),
            more_problems=form.problems.more,
        )


def _json_strings(value: object, name: str, problems: ProblemList) -> tuple[str, ...]:
    """A JSON string or list of strings as a tuple; anything else is a problem."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list):
        problems.add(name, "must be a string or a list of strings")
        return ()
    kept = [item for item in value if isinstance(item, str)]
    wrong = len(value) - len(kept)
    # Hostile lists hold millions of items: describe the first few, count the rest.
    for n, i in enumerate(i for i, item in enumerate(value) if not isinstance(item, str)):
        if problems.full:
            problems.skip(name, wrong - n)
            break
        problems.add(f"{name}[{i}]", "must be a string")
    return tuple(kept)


def _json_headers(raw: object, problems: ProblemList) -> tuple[tuple[str, str], ...]:
    """The ``headers`` object as (name, value) pairs; a value that is no string is a problem."""
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        problems.add("headers", 'must be an object such as {"X-Foo": "bar"}')
        return ()
    headers: list[tuple[str, str]] = []
    for name, value in raw.items():
        if isinstance(value, str):
            headers.append((str(name), value))
        else:
            problems.add(f"headers.{clip(str(name))}", "must be a string")
    return tuple(headers)


def _refuse_unknown_json_fields(document: Mapping[object, object], problems: ProblemList) -> None:
    for key in document:
        if key in ("attachment", "attachments", "inline"):
            problems.add(str(key), _FILES_ONLY_IN_FORMS)
        elif key not in _JSON_FIELDS:
            known = ", ".join(_JSON_FIELDS)
            problems.add(clip(str(key)), f"unknown field; the fields are {known}")


@attrs.define
class _FormFields:
    """The text fields of a form, sorted by kind as they arrive, in their order."""

    problems: ProblemList = attrs.Factory(ProblemList)
    single: dict[str, str] = attrs.Factory(dict)
    repeats: dict[str, int] = attrs.Factory(dict)
    lists: dict[str, list[str]] = attrs.Factory(lambda: {name: [] for name in _LISTS})
    headers: list[tuple[str, str]] = attrs.Factory(list)
    tags: list[str] = attrs.Factory(list)

    def take(self, name: str, value: str) -> None:
        if name in _SINGLE:
            if name in self.single:
                self.repeats[name] = self.repeats.get(name, 1) + 1
            else:
                self.single[name] = value
        elif name in self.lists:
            self.lists[name].append(value)
        elif name == "o:tag":
            self.tags.append(value)
        elif name.startswith("h:"):
            self.headers.append((name[2:], value))
        elif name in _FILE_FIELDS:
            self.problems.add(name, "must be a file upload, not a text field (curl: -F name=@path)")
        elif name.startswith("o:"):
            self.problems.add(clip(name), "unsupported option; only o:tag is")
        else:
            self.problems.add(clip(name), f"unknown field; the fields are {_FORM_FIELDS}")
