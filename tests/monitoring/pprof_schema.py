"""pprof's ``profile.proto`` (github.com/google/pprof, proto/profile.proto) as protobuf
message classes built at test time, so a real protobuf parser reads what Dispatch writes by
hand. The field names, numbers and types below are the schema's, all of it (also the fields
Dispatch does not write), so an encoding slip shows as a parse error or a wrong value."""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

_F = descriptor_pb2.FieldDescriptorProto
_INT64, _UINT64, _BOOL, _STRING, _MESSAGE = (
    _F.TYPE_INT64,
    _F.TYPE_UINT64,
    _F.TYPE_BOOL,
    _F.TYPE_STRING,
    _F.TYPE_MESSAGE,
)
_ONE, _MANY = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
_PACKAGE = "perftools.profiles"

# message -> (field name, number, type, label, message type of a message field)
SCHEMA: dict[str, list[tuple[str, int, int, int, str]]] = {
    "Profile": [
        ("sample_type", 1, _MESSAGE, _MANY, "ValueType"),
        ("sample", 2, _MESSAGE, _MANY, "Sample"),
        ("mapping", 3, _MESSAGE, _MANY, "Mapping"),
        ("location", 4, _MESSAGE, _MANY, "Location"),
        ("function", 5, _MESSAGE, _MANY, "Function"),
        ("string_table", 6, _STRING, _MANY, ""),
        ("drop_frames", 7, _INT64, _ONE, ""),
        ("keep_frames", 8, _INT64, _ONE, ""),
        ("time_nanos", 9, _INT64, _ONE, ""),
        ("duration_nanos", 10, _INT64, _ONE, ""),
        ("period_type", 11, _MESSAGE, _ONE, "ValueType"),
        ("period", 12, _INT64, _ONE, ""),
        ("comment", 13, _INT64, _MANY, ""),
        ("default_sample_type", 14, _INT64, _ONE, ""),
        ("doc_url", 15, _INT64, _ONE, ""),
    ],
    "ValueType": [("type", 1, _INT64, _ONE, ""), ("unit", 2, _INT64, _ONE, "")],
    "Sample": [
        ("location_id", 1, _UINT64, _MANY, ""),
        ("value", 2, _INT64, _MANY, ""),
        ("label", 3, _MESSAGE, _MANY, "Label"),
    ],
    "Label": [
        ("key", 1, _INT64, _ONE, ""),
        ("str", 2, _INT64, _ONE, ""),
        ("num", 3, _INT64, _ONE, ""),
        ("num_unit", 4, _INT64, _ONE, ""),
    ],
    "Mapping": [
        ("id", 1, _UINT64, _ONE, ""),
        ("memory_start", 2, _UINT64, _ONE, ""),
        ("memory_limit", 3, _UINT64, _ONE, ""),
        ("file_offset", 4, _UINT64, _ONE, ""),
        ("filename", 5, _INT64, _ONE, ""),
        ("build_id", 6, _INT64, _ONE, ""),
        ("has_functions", 7, _BOOL, _ONE, ""),
        ("has_filenames", 8, _BOOL, _ONE, ""),
        ("has_line_numbers", 9, _BOOL, _ONE, ""),
        ("has_inline_frames", 10, _BOOL, _ONE, ""),
    ],
    "Location": [
        ("id", 1, _UINT64, _ONE, ""),
        ("mapping_id", 2, _UINT64, _ONE, ""),
        ("address", 3, _UINT64, _ONE, ""),
        ("line", 4, _MESSAGE, _MANY, "Line"),
        ("is_folded", 5, _BOOL, _ONE, ""),
    ],
    "Line": [
        ("function_id", 1, _UINT64, _ONE, ""),
        ("line", 2, _INT64, _ONE, ""),
        ("column", 3, _INT64, _ONE, ""),
    ],
    "Function": [
        ("id", 1, _UINT64, _ONE, ""),
        ("name", 2, _INT64, _ONE, ""),
        ("system_name", 3, _INT64, _ONE, ""),
        ("filename", 4, _INT64, _ONE, ""),
        ("start_line", 5, _INT64, _ONE, ""),
    ],
}


def _classes() -> dict[str, type[Message]]:
    file = descriptor_pb2.FileDescriptorProto(
        name="profile.proto", package=_PACKAGE, syntax="proto3"
    )
    for message_name, fields in SCHEMA.items():
        message = file.message_type.add(name=message_name)
        for name, number, kind, label, type_name in fields:
            field = message.field.add(name=name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = f".{_PACKAGE}.{type_name}"
    # A pool of its own: the default pool is shared with whatever else the tests import.
    return message_factory.GetMessages([file], pool=descriptor_pool.DescriptorPool())


_CLASSES = _classes()


def message_class(name: str) -> Any:
    """The class of ``perftools.profiles.<name>`` (``Profile``, ``ValueType``, ...).

    ``Any``: its fields are made at run time, from :data:`SCHEMA`."""
    return _CLASSES[f"{_PACKAGE}.{name}"]


def parse_profile(data: bytes) -> Any:
    """Parse an (uncompressed) ``Profile`` message; protobuf raises on malformed input."""
    profile = message_class("Profile")()
    profile.ParseFromString(data)
    return profile
